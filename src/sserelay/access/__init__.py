"""Who may read and publish (``tokens``, ``keys``, ``patterns``, ``policy``) and how much
(``limits``); ``admission`` is the check a stream passes before it opens."""
