"""Generated audio as a listener gets it: the formats and normalisations offered (`output`), loudness
(`loudness`) and the encoded bytes (`encoding`). Import the submodule you need: `output` is
dependency-free, for names and routes; the others load libsndfile, SciPy and pyloudnorm."""
