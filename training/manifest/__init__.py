"""The models folder: manifest.json read and checked (read.py), written (write.py; folder.py is the one
module that names it), versions, the untrained fixtures."""
