"""Bounded media handling: image and video decoding under limits, and SSRF-safe URL fetching.

All functions here are synchronous CPU work (except fetching) meant to run off the event loop, in the
gateway's media pool; every failure is one of the core errors (400/403/413/415/422), never a crash.
"""
