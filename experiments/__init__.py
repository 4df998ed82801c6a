"""The paper's tables as recipes, and the end-to-end demo.

recipe.py      one declarative TOML file per table row: generator, trainer and evaluator settings,
               the number of seeds, the paper's own numbers, and a `tiny` form for the test suite
runner.py      runs generation -> training -> evaluation for every seed, content-addressed so a re-run
               skips finished steps and rows that share a stage (same settings) share its output
table.py       collects finished runs into results.md: mean ± std beside the paper's numbers
demo_data.py   a folder of procedurally drawn images with masks, so the demo needs no download
demo.py        `make demo`: the whole pipeline on the built-in stand-in GAN, in minutes on a CPU
__main__.py    `python -m experiments run RECIPE | table | list`
"""
