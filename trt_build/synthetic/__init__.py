"""The fleet's own small, honest multimodal test model: synthetic captioned shapes and a LiT image tower.

No pretrained CLIP can be installed offline, so the project trains an image tower into the frozen
all-MiniLM-L6-v2 text space on data it generates itself (`shapes`), with `train_lit` as the recipe.
"""
