"""Small models and their data, used by the spaces in ``search_spaces/`` (nothing is downloaded)."""
