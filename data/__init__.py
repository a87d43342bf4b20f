"""Dataset preparation (data/download_data.py); a package so that tests can import it."""
