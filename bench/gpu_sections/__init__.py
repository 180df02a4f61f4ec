"""The GPU check's sections, one module each, run by ``bench/gpu_check.py`` in their own
processes: ``correctness`` (1), ``opcheck`` (2), ``compiled_step`` (3), ``host_sync`` (4),
``timings`` (5), ``cli_training`` (6), ``recurrent`` (7), ``token_level`` (8); ``common`` holds
the parts, tolerances and the section process's context, ``oracle`` the float64 oracle."""
