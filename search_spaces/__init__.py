"""The spaces that ship with ranksearch: YAML files, installed as ``ranksearch.search_spaces`` and read
with ``importlib.resources`` (see :mod:`ranksearch.spaces._space`)."""
