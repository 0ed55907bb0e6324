"""What a person reads: the plots (`plots`), the self-contained HTML page (`page`) and the
side-by-side comparison of two runs (`compare`), all rebuilt from result files alone."""
