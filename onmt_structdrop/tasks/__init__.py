"""Task adapters beyond translation: PTB word-level language modelling (:mod:`.lm`) and CoNLL-2003 named
entity recognition (:mod:`.ner`), each with structured dropout beside ordinary dropout, everything else equal."""
