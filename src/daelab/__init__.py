"""daelab: denoising autoencoders, trained fast, judged honestly.

The package is a library first: ``daelab.data`` reads images, ``daelab.noise`` corrupts them,
``daelab.models`` holds the DAEs, ``daelab.train`` fits them into a run directory
(``daelab.runs``), and the CLI (``daelab.cli``) is a thin layer over these.
"""
__version__ = "0.1.0"
