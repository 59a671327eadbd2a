"""Localisation: which tokens / patches carry a concept (:mod:`.tokens`), and the attribution
methods it is compared with (:mod:`.attribution`)."""
