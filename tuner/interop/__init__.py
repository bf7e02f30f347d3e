"""Other tools' study data in and out of Optuna storage: Google's batch_science archive
(Shallue et al. 2018's 454 published studies, :mod:`tuner.interop.batch_science`) imported as
studies that every analysis command reads (:mod:`tuner.interop.importer`), and our studies
written in that layout (:mod:`tuner.interop.exporter`)."""
