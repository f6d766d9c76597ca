"""Files in and out: images and preprocessing, graph files, atomic writes, output folders and paths."""
