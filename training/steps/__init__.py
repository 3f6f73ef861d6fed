"""The commands' work on a models folder: read inputs, fit (heads), write (manifest): train-title, train-scope, train-others, sweep."""
