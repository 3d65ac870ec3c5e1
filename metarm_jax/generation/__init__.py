"""Generation: the sampler (``sampling``), RM scoring of sampled responses (``scoring``) and the
``build_meta`` stage that writes a policy's samples as a MetaRM dataset."""
