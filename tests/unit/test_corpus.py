"""The docstring corpus cuts its two evaluation tasks as documented: the hard one never lets the query's
words into its document, the issue's one (first line → full docstring) always does."""

from __future__ import annotations

import ast

from tests.corpus import docstring_pairs_of

SOURCE = '''
def f():
    """Return the sorted unique values of an array.

    The input is flattened first; NaNs sort last.
    ----------
    Examples are omitted here.
    """

def g():
    """One paragraph only, so there is nothing to retrieve."""
'''


def test_summary_rest_keeps_the_summary_out_of_the_document() -> None:
    [(query, document)] = docstring_pairs_of(ast.parse(SOURCE), "summary-rest")
    assert query == "Return the sorted unique values of an array."
    assert document == "The input is flattened first; NaNs sort last. Examples are omitted here."


def test_firstline_full_documents_are_whole_docstrings() -> None:
    [(query, document)] = docstring_pairs_of(ast.parse(SOURCE), "firstline-full")
    assert query == "Return the sorted unique values of an array."
    assert document == (
        "Return the sorted unique values of an array. The input is flattened first; NaNs sort last. "
        "Examples are omitted here."
    )
