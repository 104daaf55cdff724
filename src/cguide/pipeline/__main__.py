"""python -m cguide.pipeline: the pipeline's entry point (cguide.pipeline.main)."""

from . import main

if __name__ == "__main__":
    main()
