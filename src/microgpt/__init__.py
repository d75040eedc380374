"""microgpt: the smallest complete GPT, as the book teaches it, chapter by chapter.

Chapter 2 `data`, `tokenizer`; chapter 3 `autograd`; chapter 4 `model`; chapter 5 `optim`,
`train`; chapter 6 `sample`. `engines` computes the same model faster; `cli` is the command line.
"""

__version__ = "0.2.0"
