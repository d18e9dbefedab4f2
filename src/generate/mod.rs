//! Sampling, streaming detokenization, stop strings.
