"""The bad-input suite (issue 9): every sub-command against bad or unusual inputs, in-process
(``ssa.cli.main``) and in real processes (the installed ``ssa`` script, run by ``tests/cli_batch.py``).

Every case must end with exit code 2, exactly one line on stderr starting ``ssa: error:`` that contains
the case's message, no traceback, nothing on stdout, and no file created, changed or removed anywhere
in the working folder, which holds the earlier outputs of successful runs (a graph, an ``--out-dir``
of graphs, a comparison, a report, an evaluation table). ``docs/errors.md`` lists every case; a test
keeps the table and the cases in sync.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ssa
from ssa.cli import main
from ssa.models import DigitsCNN, digits_cnn, digits_data

from .onnx_models import export

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("ssa")

# (case id, argv with {d} for the working folder, what the one line must contain)
CASES: list[tuple[str, list[str], str]] = [
    # --- analyse: the model
    ("analyse-model-missing", ["analyse", "{d}/nothere.pt2", "--images", "{d}/x.npy", "-t", "3", "-o",
                               "{d}/prev/g.json"], "does not exist"),
    ("analyse-model-unreadable", ["analyse", "{d}/broken.pt2", "--images", "{d}/x.npy", "-t", "3"], "cannot read"),
    ("analyse-model-no-attr", ["analyse", "ssa.models:nope", "--images", "{d}/x.npy", "-t", "3"], "no attribute"),
    ("analyse-model-no-module", ["analyse", "ssa.nomodule:x", "--images", "{d}/x.npy", "-t", "3"], "cannot import"),
    ("analyse-model-unknown-kind", ["analyse", "foo", "--images", "{d}/x.npy", "-t", "3"],
     "cannot tell what model 'foo' is"),
    ("analyse-model-code-raises", ["analyse", "{d}/models.py:raising", "--images", "{d}/x.npy", "-t", "3"],
     "to build the model raised ValueError: no weights here"),
    ("analyse-model-exits-at-import", ["analyse", "{d}/exits_at_import.py:model", "--images", "{d}/x.npy", "-t", "3",
                                       "-o", "{d}/prev/g.json"],
     "importing '{d}/exits_at_import.py' raised SystemExit(0)"),
    ("analyse-model-exits-when-built", ["analyse", "{d}/models.py:exiting", "--images", "{d}/x.npy", "-t", "3"],
     "to build the model raised SystemExit(3); model code must not end the process"),
    ("analyse-model-exits-in-forward", ["analyse", "{d}/models.py:ExitsInForward", "--images", "{d}/x.npy", "-t", "3",
                                        "-o", "{d}/prev/g.json"], "raised SystemExit(0), which ends the run"),
    ("analyse-model-generator-exit", ["analyse", "{d}/models.py:GeneratorExitInForward", "--images", "{d}/x.npy",
                                      "-t", "3"], "raised GeneratorExit, which ends the run"),
    ("analyse-model-random-in-forward", ["analyse", "{d}/models.py:DropoutInForward", "--images", "{d}/x.npy", "-t",
                                         "3", "-o", "{d}/prev/g.json"],
     "the model gives two copies of one image different outputs in one batch"),
    ("analyse-model-integer-logits", ["analyse", "{d}/models.py:IntegerLogits", "--images", "{d}/x.npy", "-t", "3"],
     "the model returns int64 values, not floating-point class scores"),
    ("analyse-model-static-batch", ["analyse", "{d}/static1.pt2", "--images", "{d}/x.npy", "-t", "3"],
     "exported with a static batch size"),
    ("analyse-model-nan-logits", ["analyse", "{d}/models.py:nan_logits", "--images", "{d}/x.npy", "-t", "3", "-o",
                                  "{d}/prev/g.json"], "logits are NaN or infinite"),
    ("analyse-model-no-taps", ["analyse", "{d}/models.py:no_taps", "--images", "{d}/x.npy", "-t", "3"],
     "no taps below the logits"),
    ("analyse-model-zoo-unknown", ["analyse", "torchvision:nosuch", "--images", "{d}/x.npy", "-t", "3"],
     "torchvision has no model 'nosuch'"),
    ("analyse-weights-not-zoo", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--weights", "{d}/f.txt"],
     "--weights applies to timm:NAME and torchvision:NAME models"),
    ("analyse-backend-unknown", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--backend", "nope"],
     "unknown backend 'nope'"),
    ("analyse-device-unknown", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--device", "tpu"],
     "device must be 'cpu', 'cuda' or 'cuda:N'"),
    ("analyse-parity-not-onnx", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--parity-tolerance", "1"],
     "--parity-tolerance applies to ONNX models only"),
    # --- analyse: the images and labels
    ("analyse-images-missing", ["analyse", "digits", "--images", "{d}/nothere.npy", "-t", "3"], "do not exist"),
    ("analyse-images-wrong-shape", ["analyse", "digits", "--images", "{d}/wrong_shape.npy", "-t", "3"],
     "the model failed on an input of shape (1, 1, 4, 8)"),
    ("analyse-images-strings", ["analyse", "digits", "--images", "{d}/strings.npy", "-t", "3"], "must hold numbers"),
    ("analyse-images-not-npy", ["analyse", "digits", "--images", "{d}/garbage.npy", "-t", "3"], "cannot read"),
    ("analyse-images-nan", ["analyse", "digits", "--images", "{d}/nan.npy", "-t", "3"], "contains NaN or infinite"),
    ("analyse-images-empty", ["analyse", "digits", "--images", "{d}/empty.npy", "-t", "3"], "is empty (0 images)"),
    ("analyse-images-other-file", ["analyse", "digits", "--images", "{d}/f.txt", "-t", "3"],
     "images must be a .npy file or a folder"),
    ("analyse-images-empty-folder", ["analyse", "digits", "--images", "{d}/emptyfolder", "-t", "3"],
     "holds no PNG/JPEG files"),
    ("analyse-images-channels", ["analyse", "digits", "--images", "{d}/gray", "-t", "3"],
     "if the model expects grayscale input, pass --channels 1"),
    ("analyse-mean-count", ["analyse", "digits", "--images", "{d}/gray", "-t", "3", "--channels", "1", "--mean",
                            "0.5,0.5"], "mean has 2 values but the images are read with 1 channel"),
    ("analyse-std-infinite", ["analyse", "digits", "--images", "{d}/gray", "-t", "3", "--channels", "1", "--std",
                              "inf"], "std values must be finite numbers > 0, got inf"),
    ("analyse-scale-0", ["analyse", "digits", "--images", "{d}/gray", "-t", "3", "--channels", "1", "--scale", "0"],
     "scale must be a finite number > 0 (it multiplies the 0-255 pixel values), got 0.0"),
    ("analyse-resize-for-npy", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--resize", "8,8"],
     "--resize applies to folders of image files"),
    ("analyse-mean-for-digits", ["analyse", "digits", "--images", "digits", "-t", "3", "--mean", "0.5"],
     "--mean applies to folders of image files"),
    ("analyse-preprocess-key-twice", ["analyse", "digits", "--images", "{d}/gray", "-t", "3", "--preprocess",
                                      "{d}/twicepre.json", "-o", "{d}/prev/g.json"],
     "preprocess config 'twicepre.json' gives 'mean' twice, [0.5] and [0.1]; give each setting once."),
    ("analyse-preprocess-and-resize", ["analyse", "digits", "--images", "{d}/gray", "-t", "3", "--preprocess", "0-1",
                                       "--resize", "8,8"], "--resize cannot be combined with --preprocess"),
    ("analyse-labels-float", ["analyse", "digits", "--images", "{d}/x.npy", "--labels", "{d}/float_labels.npy",
                              "-t", "3"], "labels must be integer class indices, got float64 values"),
    ("analyse-labels-one-hot", ["analyse", "digits", "--images", "{d}/x.npy", "--labels", "{d}/onehot.npy", "-t",
                                "3"], "they look one-hot"),
    ("analyse-labels-count", ["analyse", "digits", "--images", "{d}/x.npy", "--labels", "{d}/short_labels.npy", "-t",
                              "3"], "labels has 10 entries for 60 images"),
    ("analyse-labels-out-of-range", ["analyse", "digits", "--images", "{d}/x.npy", "--labels",
                                     "{d}/one_based_labels.npy", "-t", "3"],
     "labels must be classes in [0, 9] (the model has 10 logits), got 10"),
    ("analyse-labels-out-of-range-all", ["analyse", "digits", "--images", "{d}/x.npy", "--labels",
                                         "{d}/one_based_labels.npy", "--targets", "all", "--out-dir", "{d}/lr"],
     "of 60 images are outside); pass this model's class indices (0-based)"),
    ("analyse-max-per-class-0", ["analyse", "digits", "--images", "{d}/x.npy", "--labels", "{d}/y.npy", "--targets",
                                 "3", "--max-per-class", "0"], "max_per_class must be >= 1"),
    ("analyse-batch-size-0", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--batch-size", "0"],
     "batch_size must be >= 1, got 0. Pass --batch-size 1 or more."),
    # --- analyse: files that are not what they seem (issue 18)
    ("analyse-images-decompression-bomb", ["analyse", "digits", "--images", "{d}/bomb", "--channels", "1", "-t", "3"],
     "pixels, Pillow's limit against decompression bombs; shrink it"),
    ("analyse-images-bomb-warning", ["analyse", "digits", "--images", "{d}/bigpng", "--channels", "1", "-t", "3"],
     "declares more than 89,478,485 pixels"),
    ("analyse-images-float-out-of-range", ["analyse", "digits", "--images", "{d}/floattif", "--channels", "1", "-t",
                                           "3"], "ssa reads float images in [0, 1]"),
    ("analyse-images-npz-as-npy", ["analyse", "digits", "--images", "{d}/archive.npy", "-t", "3"],
     "is a .npz archive of 2 array(s) (images, labels), not a .npy array; save the images as one .npy file"),
    ("analyse-labels-npz-as-npy", ["analyse", "digits", "--images", "{d}/x.npy", "--labels", "{d}/archive.npy", "-t",
                                   "3"], "not a .npy array; save the labels as one .npy file"),
    ("analyse-onnx-external-data-missing", ["analyse", "{d}/ext.onnx", "--images", "{d}/x.npy", "-t", "3"],
     "'ext.onnx' keeps its weights in the external data file 'ext.onnx.data', which is missing"),
    # --- analyse: class folders and --class-map (issue 18, item 1)
    ("analyse-class-folders-synsets", ["analyse", "digits", "--images", "{d}/synsets", "--channels", "1",
                                       "--targets", "all"], "pass --class-map imagenet (the standard ILSVRC-2012"),
    ("analyse-class-folders-mixed", ["analyse", "digits", "--images", "{d}/mixedclasses", "--channels", "1",
                                     "--targets", "all"], "mix numbers (3) and names (cat)"),
    ("analyse-images-beside-class-folders", ["analyse", "digits", "--images", "{d}/strayimage", "--channels", "1",
                                            "-t", "3"],
     "holds image files (stray.png) and sub-folders of images ('3', ...); ssa reads either a flat folder"),
    ("analyse-class-map-missing", ["analyse", "digits", "--images", "{d}/synsets", "--channels", "1", "--class-map",
                                   "{d}/nothere.json", "--targets", "all"],
     "class map '{d}/nothere.json' does not exist"),
    ("analyse-class-map-kind", ["analyse", "digits", "--images", "{d}/synsets", "--channels", "1", "--class-map",
                                "wordnet", "--targets", "all"], "class map must be 'imagenet' or a .json or .csv file"),
    ("analyse-class-map-bad-index", ["analyse", "digits", "--images", "{d}/synsets", "--channels", "1",
                                     "--class-map", "{d}/badmap.json", "--targets", "all"],
     "has class 'x'; every folder needs a class index"),
    ("analyse-class-map-unnamed-folder", ["analyse", "digits", "--images", "{d}/synsets", "--channels", "1",
                                          "--class-map", "{d}/shortmap.csv", "--targets", "all"],
     "n15075141' is not in the class map"),
    ("analyse-class-map-folder-twice", ["analyse", "digits", "--images", "{d}/synsets", "--channels", "1",
                                        "--class-map", "{d}/twicemap.csv", "--targets", "all", "--out-dir",
                                        "{d}/prev/graphs"],
     "class map '{d}/twicemap.csv' gives folder 'n01440764' two classes, 3 and 0; give each folder one class."),
    ("analyse-class-map-json-key-twice", ["analyse", "digits", "--images", "{d}/synsets", "--channels", "1",
                                          "--class-map", "{d}/twicemap.json", "--targets", "all"],
     "class map '{d}/twicemap.json' gives folder 'n15075141' two classes, 1 and 2; give each folder one class."),
    ("analyse-class-map-list-twice", ["analyse", "digits", "--images", "{d}/synsets", "--channels", "1",
                                      "--class-map", "{d}/twicelist.json", "--targets", "all"],
     "class map '{d}/twicelist.json' lists folder 'n01440764' twice, as classes 0 and 2; list each folder once."),
    ("analyse-class-map-too-many-classes", ["analyse", "digits", "--images", "{d}/synsets", "--channels", "1",
                                            "--class-map", "imagenet", "--targets", "all", "--out-dir", "{d}/cm"],
     "class folder 'n15075141' is class 999, but the model has 10 logits"),
    ("analyse-class-map-for-npy", ["analyse", "digits", "--images", "{d}/x.npy", "--class-map", "imagenet", "-t",
                                   "3"], "--class-map applies to a folder with one sub-folder per class"),
    ("analyse-class-map-and-labels", ["analyse", "digits", "--images", "{d}/synsets", "--class-map", "imagenet",
                                      "--labels", "{d}/y.npy", "-t", "3"],
     "--labels and --class-map cannot be combined"),
    # --- analyse: classes and method
    ("analyse-target-too-big", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "10"],
     "target must be in [0, 9] (the model has 10 logits), got 10."),
    ("analyse-target-negative", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "-1"],
     "target must be >= 0, got -1."),
    ("analyse-target-missing", ["analyse", "digits", "--images", "{d}/x.npy"], "got neither"),
    ("analyse-target-and-targets", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--targets", "3"],
     "got both"),
    ("analyse-targets-negative", ["analyse", "digits", "--images", "digits", "--targets", "3,-1"],
     "--targets must be class indices >= 0, got -1 in '3,-1'."),
    ("analyse-targets-twice", ["analyse", "digits", "--images", "digits", "--targets", "3,3"],
     "--targets lists a class twice"),
    ("analyse-targets-words", ["analyse", "digits", "--images", "digits", "--targets", "three"],
     "--targets must be 'all' or comma-separated class indices"),
    ("analyse-targets-too-big", ["analyse", "digits", "--images", "digits", "--targets", "3,12"],
     "--targets must be in [0, 9] (the model has 10 logits), got 12."),
    ("analyse-min-confidence", ["analyse", "digits", "--images", "digits", "--targets", "3", "--min-confidence",
                                "2"], "min_confidence must be in [0, 1], got 2.0."),
    ("analyse-branching-0", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "-b", "0"],
     "branching must be >= 1, got 0."),
    ("analyse-rule-unknown", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--rule", "magic"],
     "unknown rule 'magic'"),
    ("analyse-selector-unknown", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--selector", "nope"],
     "unknown selector 'nope'"),
    ("analyse-selector-param-range", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--selector", "tukey",
                                      "--selector-param", "k=-1"], "parameter 'k' must be >= 0, got -1.0."),
    ("analyse-selector-param-unknown", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3",
                                        "--selector-param", "k=3"], "selector 'mad' has no parameter 'k'"),
    ("analyse-selector-param-type", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--selector-param",
                                     "threshold=abc"], "parameter 'threshold' must be float, got 'abc'"),
    ("analyse-selector-param-syntax", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--selector-param",
                                       "threshold"], "--selector-param must look like name=value"),
    ("analyse-selector-param-twice", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--selector-param",
                                      "threshold=2", "--selector-param", "threshold=5"],
     "--selector-param gives 'threshold' twice, 2 and 5; give each name once."),
    ("analyse-selector-param-infinite", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3",
                                         "--selector-param", "threshold=inf", "-o", "{d}/prev/g.json"],
     "selector 'mad' parameter 'threshold' must be a finite number, got inf."),
    ("analyse-rule-param-unknown", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--rule-param", "a=1"],
     "rule 'gradient_x_activation' has no parameter 'a'"),
    ("analyse-preset-and-rule", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--preset", "paper",
                                 "--rule", "gradient"], "preset 'paper' sets the rule"),
    ("analyse-preset-unknown", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--preset", "mine"],
     "argument --preset: invalid choice: 'mine'"),
    ("analyse-stop-at-unknown", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--stop-at", "nosuch"],
     "stop_at 'nosuch' is not a tap"),
    ("analyse-taps-unknown", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--taps", "nosuch"],
     "tap 'nosuch' is not a node of the model"),
    ("analyse-taps-twice", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--taps",
                            "features.5,features.2,features.5"],
     "taps lists 'features.5' twice, got 'features.5,features.2,features.5'; list each tap once."),
    ("analyse-channel-axis-text", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--channel-axis",
                                   "T=abc"], "--channel-axis must look like TAP=AXIS with an integer axis"),
    ("analyse-channel-axis-tap", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--channel-axis",
                                  "nosuch=1"], "channel axis given for unknown tap 'nosuch'"),
    ("analyse-tokens-no-class-token", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--tokens", "cls"],
     "the model has no class token"),
    ("analyse-engine-unknown", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--engine", "gpu"],
     "argument --engine: invalid choice: 'gpu'"),
    ("analyse-option-unknown", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--nope"],
     "unrecognized arguments: --nope"),
    # --- analyse: outputs and stores
    ("analyse-out-suffix", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "-o", "{d}/prev/g.txt"],
     "--out must end in .json or .graphml"),
    ("analyse-out-is-folder", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "-o", "{d}/adir.json"],
     "is a folder; expected a file name ending in .json"),
    ("analyse-out-below-file", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "-o", "{d}/afile/g.json"],
     "'{d}/afile' is a file"),
    ("analyse-out-with-targets", ["analyse", "digits", "--images", "digits", "--targets", "1,2", "-o",
                                  "{d}/prev/g.json"], "--out writes one graph; with --targets use --out-dir"),
    ("analyse-out-dir-is-file", ["analyse", "digits", "--images", "digits", "--targets", "1,2", "--out-dir",
                                 "{d}/afile"], "--out-dir '{d}/afile' is a file; expected a folder"),
    ("analyse-out-dir-foreign", ["analyse", "digits", "--images", "digits", "--targets", "1,2", "--out-dir",
                                 "{d}/foreign"], "already holds class-7.json, which no earlier `ssa analyse` run"),
    ("analyse-store-is-file", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "--store", "{d}/afile"],
     "--store '{d}/afile' is a file; a statistics store is a folder"),
    ("analyse-ssa-store-is-file", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "ENV:SSA_STORE={d}/afile"],
     "SSA_STORE '{d}/afile' is a file"),
    ("analyse-env-switch-typo", ["analyse", "digits", "--images", "{d}/x.npy", "-t", "3", "-o", "{d}/prev/g.json",
                                 "ENV:SSA_KEEP_MEMORY=of"],
     "the environment variable SSA_KEEP_MEMORY='of' is not a switch: set it to 0 (off) or 1 (on)"),
    # --- check
    ("check-input-shape-negative", ["check", "digits", "--input-shape=-1,8,8"],
     "--input-shape must hold integers >= 1, got -1 in '-1,8,8'."),
    ("check-input-shape-text", ["check", "digits", "--input-shape", "abc"],
     "--input-shape must be comma-separated integers, got 'abc'."),
    ("check-nothing-to-run", ["check", "digits"], "pass --images or --input-shape C,H,W"),
    ("check-input-shape-and-images", ["check", "digits", "--images", "{d}/x.npy", "--input-shape", "1,16,16"],
     "--input-shape 1,16,16 applies without --images (the images give the shape); drop one of them."),
    ("check-static-batch", ["check", "{d}/static1.pt2", "--input-shape", "1,8,8"],
     "runs on 1 image but fails on a batch of 2"),
    ("check-folder-option-without-images", ["check", "digits", "--input-shape", "1,8,8", "--bgr"],
     "--bgr applies to --images folders of image files, and no --images was given"),
    ("check-model-missing", ["check", "{d}/nothere.onnx", "--input-shape", "1,8,8"], "nothere.onnx"),
    # --- collect
    ("collect-model-exits-in-forward", ["collect", "{d}/models.py:ExitsInForward", "--images", "{d}/x.npy", "--store",
                                        "{d}/store"], "raised SystemExit(0), which ends the run"),
    ("collect-store-is-file", ["collect", "digits", "--images", "{d}/x.npy", "--store", "{d}/afile"],
     "--store '{d}/afile' is a file"),
    ("collect-store-below-file", ["collect", "digits", "--images", "{d}/x.npy", "--store", "{d}/afile/store"],
     "'{d}/afile' is a file, so the store"),
    ("collect-rule-unknown", ["collect", "digits", "--images", "{d}/x.npy", "--store", "{d}/store", "--rule",
                              "magic"], "unknown rule 'magic'"),
    ("collect-batch-size-0", ["collect", "digits", "--images", "{d}/x.npy", "--store", "{d}/store",
                              "--batch-size", "0"], "--batch-size must be >= 1, got 0."),
    ("collect-nan-logits", ["collect", "{d}/models.py:nan_logits", "--images", "{d}/x.npy", "--store", "{d}/store"],
     "logits are NaN or infinite"),
    ("collect-static-batch", ["collect", "{d}/static1.pt2", "--images", "{d}/x.npy", "--store", "{d}/store"],
     "static batch size"),
    # --- compare
    ("compare-one-graph", ["compare", "{d}/graphs/class-1.json"], "comparing needs at least 2 graphs, got 1"),
    ("compare-graph-missing", ["compare", "{d}/graphs/class-1.json", "{d}/nothere.json"], "does not exist"),
    ("compare-graph-folder", ["compare", "{d}/graphs", "{d}/graphs/class-1.json"],
     "is a folder; pass a graph file (.json or .graphml)"),
    ("compare-graph-json-list", ["compare", "{d}/list.json", "{d}/graphs/class-1.json"],
     "holds a JSON list, not a node-link graph"),
    ("compare-graph-broken-graphml", ["compare", "{d}/broken.graphml", "{d}/graphs/class-1.json"],
     "is not a graph written by ssa (ParseError"),
    ("compare-graph-not-a-number", ["compare", "{d}/badnumber.json", "{d}/graphs/class-2.json"],
     "is not a graph written by ssa (an attribute does not hold a number: ValueError: invalid literal for int()"),
    ("compare-graph-newer-schema", ["compare", "{d}/graphs/class-1.json", "{d}/newer.json"],
     "was written by a newer ssa (graph schema 99; this ssa reads up to 1); upgrade ssa to read it."),
    ("compare-graph-not-ssa", ["compare", "{d}/nonssa.json", "{d}/graphs/class-1.json"],
     "has no 'tap' and 'neuron' attributes"),
    ("compare-mixed-rules", ["compare", "{d}/graphs/class-1.json", "{d}/paper/class-2.json"],
     "the graphs were made with different rule"),
    ("compare-other-model", ["compare", "{d}/graphs/class-1.json", "{d}/other/class-2.json"],
     "the graphs come from different models"),
    ("compare-same-graph-twice", ["compare", "{d}/graphs/class-1.json", "{d}/graphs/class-2.json",
                                  "{d}/graphs/class-1.json", "--out-dir", "{d}/prev/cmp"],
     "class-1.json and class-1.json are the same class 1 from one run (same model, parameters and image set)"),
    ("explore-same-graph-twice", ["explore", "{d}/graphs/class-2.json", "{d}/prev/g.json", "{d}/graphs/class-2.json",
                                  "--out", "{d}/prev/ex.html"], "are the same class 2 from one run"),
    ("compare-empty-graph", ["compare", "{d}/graphs/class-1.json", "{d}/empty.json"], "is an empty graph"),
    ("compare-out-dir-is-file", ["compare", "{d}/graphs/class-1.json", "{d}/graphs/class-2.json", "--out-dir",
                                 "{d}/afile"], "--out-dir '{d}/afile' is a file"),
    ("compare-shared-unknown", ["compare", "{d}/graphs/class-1.json", "{d}/graphs/class-2.json", "--shared", "9"],
     "--shared must list classes of the given graphs (1, 2), got '9'."),
    ("compare-format-unknown", ["compare", "{d}/graphs/class-1.json", "{d}/graphs/class-2.json", "--format", "gif"],
     "argument --format: invalid choice: 'gif'"),
    # --- report
    ("report-evaluation-missing", ["report", "{d}/graphs/class-1.json", "--evaluation", "{d}/nothere.csv", "--out",
                                   "{d}/prev/report.html"], "--evaluation '{d}/nothere.csv' does not exist"),
    ("report-curves-not-curves", ["report", "{d}/graphs/class-1.json", "--curves", "{d}/prev/eval.csv", "--out",
                                  "{d}/prev/report.html"], "has no column 'parameter'; pass a CSV written by"),
    ("report-out-suffix", ["report", "{d}/graphs/class-1.json", "--out", "{d}/prev/report.txt"],
     "--out must end in .html or .htm"),
    ("report-out-is-folder", ["report", "{d}/graphs/class-1.json", "--out", "{d}/adir.html"],
     "is a folder; expected a file name ending in .html"),
    ("report-model-without-images", ["report", "{d}/graphs/class-1.json", "{d}/graphs/class-2.json", "--model",
                                     "digits", "--out", "{d}/prev/report.html"],
     "pass both --model and --images"),
    ("report-model-option-without-model", ["report", "{d}/graphs/class-1.json", "{d}/graphs/class-2.json", "--taps",
                                           "features.5", "--out", "{d}/prev/report.html"],
     "--taps applies with --model (the figures that need the network), and no --model was given; drop --taps, or "
     "pass --model and --images."),
    ("report-n-images-0", ["report", "{d}/graphs/class-1.json", "--n-images", "0", "--out", "{d}/prev/report.html"],
     "--n-images must be >= 1, got 0."),
    ("report-mixed-rules", ["report", "{d}/graphs/class-1.json", "{d}/paper/class-2.json", "--out",
                            "{d}/prev/report.html"], "the graphs were made with different rule"),
    ("report-other-model", ["report", "{d}/other/class-2.json", "--model", "digits", "--images", "digits", "--out",
                            "{d}/prev/report.html"], "pass the model the graph was made with"),
    # --- figures
    ("figures-graph-folder", ["figures", "digits", "--images", "digits", "--graph", "{d}/graphs", "--out-dir",
                              "{d}/prev/fig"], "is a folder"),
    ("figures-neuron-not-in-graph", ["figures", "digits", "--images", "digits", "--graph",
                                     "{d}/graphs/class-1.json", "--out-dir", "{d}/prev/fig", "--neuron", "logits:7"],
     "--neuron logits:7 is not a node of the graph"),
    ("figures-neuron-syntax", ["figures", "digits", "--images", "digits", "--graph", "{d}/graphs/class-1.json",
                               "--out-dir", "{d}/prev/fig", "--neuron", "abc"], "a neuron must look like TAP:INDEX"),
    ("figures-n-images-0", ["figures", "digits", "--images", "digits", "--graph", "{d}/graphs/class-1.json",
                            "--out-dir", "{d}/prev/fig", "--n-images", "0"], "--n-images must be >= 1, got 0."),
    ("figures-other-model", ["figures", "{d}/models.py:random_digits", "--images", "digits", "--graph",
                             "{d}/graphs/class-1.json", "--out-dir", "{d}/prev/fig"],
     "pass the model the graph was made with"),
    ("figures-other-images", ["figures", "digits", "--images", "{d}/x.npy", "--graph", "{d}/graphs/class-1.json",
                              "--out-dir", "{d}/prev/fig"], "was made from another image set"),
    ("figures-out-dir-is-file", ["figures", "digits", "--images", "digits", "--graph", "{d}/graphs/class-1.json",
                                 "--out-dir", "{d}/afile"], "--out-dir '{d}/afile' is a file"),
    ("figures-graph-missing", ["figures", "digits", "--images", "digits", "--out-dir", "{d}/prev/fig"],
     "the following arguments are required: --graph"),
    # --- explore
    ("explore-reference-option-without-model", ["explore", "{d}/graphs/class-1.json", "--top-k", "8", "--out",
                                                "{d}/prev/ex.html"],
     "--top-k applies with --model (the reference images), and no --model was given; drop --top-k, or pass --model "
     "and --images."),
    ("explore-out-foreign", ["explore", "{d}/graphs/class-1.json", "--out", "{d}/notexplorer/"],
     "holds something else than an explorer (notes.txt, which no earlier `ssa explore` wrote there)"),
    # --- evaluate
    ("evaluate-same-output", ["evaluate", "digits", "--images", "digits", "--targets", "3", "--out",
                              "{d}/prev/eval.csv", "--layers-out", "{d}/prev/eval.csv"],
     "--out and --layers-out name the same file"),
    ("evaluate-targets-twice", ["evaluate", "digits", "--images", "digits", "--targets", "3,3"],
     "--targets lists a class twice"),
    ("evaluate-stop-at-unknown", ["evaluate", "digits", "--images", "digits", "--targets", "3", "--stop-at",
                                  "nosuch", "--rules", "gradient", "--selectors", "tukey"],
     "stop_at 'nosuch' is not a tap"),
    ("evaluate-out-suffix", ["evaluate", "digits", "--images", "digits", "--targets", "3", "--out",
                             "{d}/prev/eval.txt"], "--out must end in .csv"),
    ("evaluate-draws-0", ["evaluate", "digits", "--images", "digits", "--targets", "3", "--draws", "0"],
     "draws must be >= 1, got 0."),
    ("evaluate-selectors-twice", ["evaluate", "digits", "--images", "digits", "--targets", "3", "--selectors",
                                  "mad,tukey,mad", "--out", "{d}/prev/eval.csv"],
     "--selectors lists 'mad' twice, got 'mad,tukey,mad'; list each once."),
    ("evaluate-rules-twice", ["evaluate", "digits", "--images", "digits", "--targets", "3", "--rules",
                              "gradient, gradient"], "--rules lists 'gradient' twice"),
    ("evaluate-selector-unknown", ["evaluate", "digits", "--images", "digits", "--targets", "3", "--selectors",
                                   "nope"], "unknown selector 'nope'"),
    ("evaluate-threads-0", ["evaluate", "digits", "--images", "digits", "--targets", "3", "--threads", "0"],
     "--threads must be >= 1, got 0."),
    ("evaluate-targets-without-labels", ["evaluate", "digits", "--images", "{d}/x.npy", "--targets", "0,3"],
     "need labels to pick each class's images"),
    ("evaluate-selector-param-owner", ["evaluate", "digits", "--images", "digits", "--targets", "3", "--selectors",
                                       "tukey", "--selector-param", "mad.threshold=2"],
     "names selector 'mad', which is not evaluated"),
    ("evaluate-ablation-unknown", ["evaluate", "digits", "--images", "digits", "--targets", "3", "--ablation",
                                   "zero,noise"], "--ablation must list some of zero, mean, resample (or 'all'), got"),
    ("evaluate-curves-out-suffix", ["evaluate", "digits", "--images", "digits", "--targets", "3", "--curves-out",
                                    "{d}/prev/curves.txt"], "--curves-out must end in .csv"),
    ("evaluate-figure-suffix", ["evaluate", "digits", "--images", "digits", "--targets", "3", "--figure",
                                "{d}/prev/curves.jpg"], "--figure must end in .png or .svg"),
    ("evaluate-bootstrap-negative", ["evaluate", "digits", "--images", "digits", "--targets", "3", "--bootstrap",
                                     "-1"], "bootstrap must be >= 0, got -1."),
    ("evaluate-split-range", ["evaluate", "digits", "--images", "digits", "--targets", "3", "--split", "1"],
     "split must be 'auto' or a number in [0, 1)"),
    # --- plugins and the command itself
    ("plugins-unknown-option", ["plugins", "--all"], "unrecognized arguments: --all"),
    ("plugins-extra-argument", ["plugins", "extra"], "unrecognized arguments: extra"),
    ("command-unknown", ["nosuch"], "argument COMMAND: invalid choice: 'nosuch'"),
]

MODELS_PY = """
import torch
from ssa.models import DigitsCNN, digits_cnn


def raising():
    raise ValueError("no weights here")


def nan_logits():
    m = digits_cnn()
    with torch.no_grad():
        m.classifier[3].bias[2] = float("nan")
    return m


def no_taps():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def random_digits():
    torch.manual_seed(7)
    return DigitsCNN()


def exiting():
    raise SystemExit(3)


class ExitsInForward(DigitsCNN):
    def forward(self, x):
        import sys
        sys.exit(0)


class GeneratorExitInForward(DigitsCNN):
    def forward(self, x):
        raise GeneratorExit


class IntegerLogits(DigitsCNN):
    def forward(self, x):
        return (super().forward(x) * 100).long()


class DropoutInForward(DigitsCNN):  # F.dropout without training=self.training: active in eval mode too
    def forward(self, x):
        return self.classifier(torch.nn.functional.dropout(self.features(x), 0.5))
"""


def _png_header(path: Path, width: int, height: int) -> None:
    """A small PNG file whose header declares ``width`` x ``height`` pixels (Pillow checks the size on open)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
                     + chunk(b"IEND", b""))


def _onnx_without_its_data(path: Path, x: np.ndarray) -> None:
    """An ONNX model saved with its weights in an external data file, which is then removed."""
    import onnx

    export(digits_cnn().eval(), x, path.with_suffix(".tmp.onnx"))
    proto = onnx.load(str(path.with_suffix(".tmp.onnx")))
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)
    path.with_suffix(".tmp.onnx").unlink()
    (path.parent / (path.name + ".data")).unlink()


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The working folder: bad inputs, good inputs, and the earlier outputs of successful runs."""
    d = tmp_path_factory.mktemp("bad-input")
    x, y = digits_data()
    np.save(d / "x.npy", x[:60])
    np.save(d / "y.npy", y[:60])
    np.save(d / "wrong_shape.npy", x[:20, :, :4, :])
    nan = x[:20].copy()
    nan[3, 0, 2, 2] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "empty.npy", x[:0])
    np.save(d / "strings.npy", np.array([["a", "b"]]))
    (d / "garbage.npy").write_bytes(b"not an array")
    np.save(d / "float_labels.npy", np.linspace(0.1, 0.9, 60))
    np.save(d / "onehot.npy", np.eye(10)[y[:60]])
    np.save(d / "short_labels.npy", y[:10])
    np.save(d / "one_based_labels.npy", y[:60] + 1)  # 1-based: class 9 is 10, not a logit of the digits model
    (d / "f.txt").write_text("text")
    (d / "broken.pt2").write_bytes(b"PK\x03\x04 truncated")
    torch.export.save(torch.export.export(digits_cnn(), (torch.from_numpy(x[:1]),)), str(d / "static1.pt2"))
    (d / "models.py").write_text(MODELS_PY)
    (d / "exits_at_import.py").write_text("import sys\n\nsys.exit(0)\nmodel = None\n")
    (d / "gray").mkdir()
    for i in range(6):
        Image.fromarray((x[i, 0] * 255).astype(np.uint8)).save(d / "gray" / f"{i}.png")
    (d / "emptyfolder").mkdir()
    _png_header(d / "bomb" / "0.png", 20000, 20000)  # over twice Pillow's limit: DecompressionBombError
    _png_header(d / "bigpng" / "0.png", 10000, 10000)  # over the limit: DecompressionBombWarning
    (d / "floattif").mkdir()
    Image.fromarray(np.linspace(0, 2, 64, dtype=np.float32).reshape(8, 8)).save(d / "floattif" / "0.tif")
    with open(d / "archive.npy", "wb") as fh:  # a .npz archive under a .npy name
        np.savez(fh, images=x[:4], labels=y[:4])
    _onnx_without_its_data(d / "ext.onnx", x)
    for folder in ("synsets/n01440764", "synsets/n15075141", "mixedclasses/3", "mixedclasses/cat"):
        (d / folder).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((x[i, 0] * 255).astype(np.uint8)).save(d / folder / f"{i}.png")
    for folder, name in (("strayimage/3", "0.png"), ("strayimage/5", "0.png"), ("strayimage", "stray.png")):
        (d / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[0, 0] * 255).astype(np.uint8)).save(d / folder / name)
    (d / "badmap.json").write_text('{"n01440764": "x", "n15075141": 1}')
    (d / "twicepre.json").write_text('{"preset": "0-1", "channels": 1, "mean": [0.5], "mean": [0.1]}')  # last won
    (d / "shortmap.csv").write_text("folder,index\nn01440764,0\n")
    (d / "twicemap.csv").write_text("folder,index\nn01440764,3\nn15075141,1\nn01440764,0\n")  # the last won
    (d / "twicemap.json").write_text('{"n01440764": 0, "n15075141": 1, "n15075141": 2}')
    (d / "twicelist.json").write_text('["n01440764", "n15075141", "n01440764"]')
    (d / "afile").write_text("a file, not a folder")
    (d / "adir.json").mkdir()
    (d / "adir.html").mkdir()
    (d / "list.json").write_text("[1, 2]")
    (d / "broken.graphml").write_text("<graphml><broken")
    (d / "nonssa.json").write_text('{"nodes": [{"id": "a"}], "edges": []}')
    (d / "notexplorer").mkdir()
    (d / "notexplorer" / "notes.txt").write_text("the user's")
    (d / "foreign").mkdir()
    (d / "foreign" / "class-7.json").write_text("written by hand")
    quiet = ["-q"]
    assert main(["analyse", "digits", "--images", "digits", "--targets", "1,2", "--out-dir", str(d / "graphs"),
                 *quiet]) == 0
    assert main(["analyse", "digits", "--images", "digits", "--targets", "2", "--preset", "paper", "--out-dir",
                 str(d / "paper"), *quiet]) == 0
    torch.manual_seed(7)
    other = ssa.analyse_many(DigitsCNN(), "digits", [2], selector="topk")
    (d / "other").mkdir()
    other[2].write(d / "other" / "class-2.json")
    for name, edit in (("badnumber.json", lambda g: g["nodes"][1].update(frequency="many")),  # edited by hand
                       ("newer.json", lambda g: g["graph"].update(schema=99))):
        data = json.loads((d / "graphs" / "class-1.json").read_text())
        edit(data)
        (d / name).write_text(json.dumps(data))
    empty = ssa.read_graph(d / "graphs" / "class-1.json")
    empty.remove_nodes_from([n for n, t in empty.nodes(data="tap") if t != "logits"])
    ssa.write_graph(empty, d / "empty.json")
    # earlier outputs that no failed run may touch
    prev = d / "prev"
    assert main(["analyse", "digits", "--images", "{}".format(d / "x.npy"), "-t", "3", "-o", str(prev / "g.json"),
                 *quiet]) == 0
    assert main(["compare", str(d / "graphs" / "class-1.json"), str(d / "graphs" / "class-2.json"), "--out-dir",
                 str(prev / "cmp")]) == 0
    assert main(["report", str(d / "graphs" / "class-1.json"), str(d / "graphs" / "class-2.json"), "--out",
                 str(prev / "report.html")]) == 0
    assert main(["evaluate", "digits", "--images", "digits", "--targets", "3", "--rules", "gradient", "--selectors",
                 "tukey", "--draws", "1", "--resamples", "0", "--out", str(prev / "eval.csv"), "-q"]) == 0
    return d


def _argv(case_argv: list[str], d: Path) -> tuple[list[str], dict[str, str]]:
    argv, env = [], {}
    for a in case_argv:
        a = a.replace("{d}", str(d))
        if a.startswith("ENV:"):
            k, v = a[4:].split("=", 1)
            env[k] = v
        else:
            argv.append(a)
    return argv, env


def _check(case_id: str, words: str, d: Path, code: int, out: str, err: str, changed: list[str]) -> None:
    words = words.replace("{d}", str(d))
    assert code == 2, f"{case_id}: exit code {code}, stderr {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1, f"{case_id}: {len(lines)} lines on stderr: {err!r}"
    assert lines[0].startswith("ssa: error: ") and "Traceback" not in err and "internal error" not in err, err
    assert words in lines[0], f"{case_id}: {words!r} not in {lines[0]!r}"
    assert out == "", f"{case_id}: output on stdout: {out!r}"
    assert not changed, f"{case_id}: files created, changed or removed: {changed}"


def test_the_suite_is_large_and_covers_every_command():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60
    commands = {c[1][0] for c in CASES}
    assert {"analyse", "check", "collect", "compare", "report", "figures", "evaluate", "plugins"} <= commands


@pytest.mark.parametrize("case_id, case_argv, words", CASES, ids=[c[0] for c in CASES])
def test_in_process(work, capsys, monkeypatch, case_id, case_argv, words):
    monkeypatch.chdir(work)
    for name in ("SSA_STORE", "SSA_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    argv, env = _argv(case_argv, work)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = _tree(work)
    code = main(argv)
    captured = capsys.readouterr()
    after = _tree(work)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    _check(case_id, words, work, code, captured.out, captured.err, changed)


@pytest.fixture(scope="module")
def batch(work, tmp_path_factory) -> dict[str, dict]:
    """Every case in a real process (tests/cli_batch.py forks one per case and runs the installed script)."""
    script = SCRIPT if SCRIPT.exists() else None
    if script is None:
        pytest.fail(f"the ssa console script is not installed next to {sys.executable}")
    tmp = tmp_path_factory.mktemp("batch")
    cases = []
    for case_id, case_argv, _ in CASES:
        argv, env = _argv(case_argv, work)
        cases.append({"id": case_id, "argv": argv, "cwd": str(work), "env": {**env, "OMP_NUM_THREADS": "1"},
                      "unset": ["SSA_STORE", "SSA_DEBUG"], "watch": str(work)})
    (tmp / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_batch.py"), str(script), str(tmp / "cases.json"),
                           str(tmp / "results.json")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return {r["id"]: r for r in json.loads((tmp / "results.json").read_text())}


@pytest.mark.slow
@pytest.mark.parametrize("case_id, case_argv, words", CASES, ids=[c[0] for c in CASES])
def test_in_a_real_process(work, batch, case_id, case_argv, words):
    r = batch[case_id]
    _check(case_id, words, work, r["code"], r["stdout"], r["stderr"], r["changed"])


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["compare-graph-json-list", "analyse-model-code-raises"])
def test_a_cold_start_of_the_script_agrees_with_the_batch(work, batch, case_id):
    """The batch runner forks from a process that imported ssa; a cold start of the script gives the same."""
    argv, env = _argv(next(c[1] for c in CASES if c[0] == case_id), work)
    full_env = {k: v for k, v in os.environ.items() if k not in ("SSA_STORE", "SSA_DEBUG")}
    proc = subprocess.run([str(SCRIPT), *argv], cwd=work, env={**full_env, **env}, capture_output=True, text=True,
                          timeout=300)
    assert (proc.returncode, proc.stdout, proc.stderr) == (batch[case_id]["code"], batch[case_id]["stdout"],
                                                           batch[case_id]["stderr"])


# --- docs/errors.md keeps one row per refused input, each with a test -------------------------------------
#: rows of docs/errors.md tested elsewhere (environment errors and whole workflows): id -> test
OTHER_TESTS = {
    "env-read-only-output": "tests/test_environment_errors.py::test_read_only_output_folder",
    "env-disk-full": "tests/test_environment_errors.py::test_disk_full_while_writing",
    "env-file-size-limit": "tests/test_environment_errors.py::test_file_size_limit_in_a_real_process",
    "env-study-output-write": "tests/scale/test_study.py::test_a_report_that_cannot_be_written_ends_the_study",
    "env-explorer-folder-write":
        "tests/test_environment_errors.py::test_a_write_error_in_an_explorer_folder_names_the_folder",
    "env-closed-pipe": "tests/test_environment_errors.py::test_closed_pipe_is_quiet",
    "env-output-checked-first": "tests/test_environment_errors.py::test_output_checks_come_before_the_computation",
    "serve-not-explorer": "tests/viz/test_explorer.py::test_cli_serve_bad_input",
    "serve-bad-host-option": "tests/viz/test_serve.py::test_a_bad_host_option_is_refused",
    "serve-foreign-host": "tests/viz/test_serve.py::test_a_request_for_another_host_is_refused",
    "serve-folder-listing": "tests/viz/test_serve.py::test_folders_are_not_listed",
    "serve-link-out": "tests/viz/test_serve.py::test_no_link_leads_out_of_the_folder",
    "serve-off-loopback": "tests/viz/test_serve.py::test_a_host_off_the_loopback_is_warned_about",
    "threads-above-cores": "tests/scale/test_resume_threads.py::test_threads_above_what_torch_takes_are_warned_about",
    "outdir-mixed-threads": "tests/scale/test_resume_threads.py::test_kept_graphs_that_disagree_are_named_in_a_warning",
    "store-second-writer": "tests/test_store.py::test_a_second_writer_is_refused",
    "store-damaged": "tests/test_store.py::test_a_damaged_store_is_refused_at_use_and_repaired_by_verify",
    "store-changed-byte": "tests/test_store.py::test_verify_finds_a_flipped_byte_by_the_hashes_recorded_at_write_time",
    "store-read-only": "tests/test_store.py::test_a_read_only_store_folder_is_refused_before_collecting",
    "store-other-batch-size": "tests/test_store.py::test_store_with_other_batch_size_is_refused",
    "plugin-broken": "tests/test_broken_plugins.py::test_ssa_plugins_names_every_broken_plugin_and_lists_the_rest",
    "plugin-selector-bug": "tests/test_selectors.py::test_a_selector_bug_is_named_not_counted",
    "plugin-rule-bug": "tests/test_selectors.py::test_a_rule_bug_is_named",
    "onnx-same-pad-size-not-fixed": "tests/test_onnx_auto_pad.py::test_a_same_pad_on_a_size_that_is_not_fixed_is_named",
    "onnx-same-pad-dilated": "tests/test_onnx_auto_pad.py::test_a_dilated_same_pad_is_named",
    "model-raises-later": "tests/test_messages.py::test_user_model_code_that_raises",
    "model-static-batch-4": "tests/test_cli.py::test_pt2_with_a_static_batch_is_refused_by_check_and_analyse",
    "graph-stops-early": "tests/test_degenerate.py::test_no_outliers_at_the_first_step_is_explained",
    "images-unscaled": "tests/test_preprocess.py::test_raw_0_255_arrays_get_a_one_line_warning",
    "study-output-skipped": "tests/scale/test_study.py::test_a_report_refused_for_its_graphs_is_one_warning",
    "evaluate-one-image": "tests/analysis/test_strategies.py::test_cli_warns_about_a_class_of_one_image",
    "outdir-stale": "tests/test_outdir.py::test_rerun_with_fewer_targets_leaves_no_stale_graph",
    "outdir-all-or-nothing": "tests/test_outdir.py::test_a_failed_or_interrupted_compare_leaves_the_earlier_outputs",
    "outdir-damaged": "tests/test_outdir.py::test_a_class_graph_cut_short_is_computed_again_with_a_notice",
    "outdir-second-writer": "tests/test_outdir.py::test_two_processes_on_one_out_dir_both_succeed",
    "identity-mixed-runs": "tests/test_identity.py::test_mixed_runs_are_refused_unless_allow_mixed",
    "env-closed-stdout": "tests/test_environment_errors.py::test_closed_stdout_and_stderr_at_start",
    "explorer-cache-unwritable":
        "tests/viz/test_explorer.py::test_a_cache_that_cannot_be_written_is_a_warning_not_a_failure",
    "study-file-bad": "tests/scale/test_study.py::test_study_file_errors_are_one_line",
    "evaluate-resample-one-class": "tests/analysis/test_strategies.py::test_cli_resample_needs_another_class",
}


def _table_rows() -> list[list[str]]:
    rows = []
    for line in (ROOT / "docs" / "errors.md").read_text().splitlines():
        if line.startswith("| `") and line.count("|") >= 5:
            cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
            rows.append([c.strip() for c in cells])
    return rows


def test_docs_errors_table_matches_the_tests():
    rows = _table_rows()
    table = {r[0].strip("`"): r for r in rows}
    assert len(table) == len(rows), "a case id appears twice in docs/errors.md"
    suite = {c[0]: c for c in CASES}
    assert set(suite) <= set(table), f"cases missing from docs/errors.md: {sorted(set(suite) - set(table))}"
    unknown = set(table) - set(suite) - set(OTHER_TESTS)
    assert not unknown, f"rows of docs/errors.md without a test: {sorted(unknown)}"
    for case_id, (_, _case_argv, words) in suite.items():
        row = table[case_id]
        assert row[2] == "2", f"{case_id}: exit code column {row[2]!r}"
        shown = row[3].strip("`").strip().replace("\\|", "|")
        assert shown == words, f"{case_id}: docs/errors.md says {shown!r}, the test checks {words!r}"
    for case_id, test in OTHER_TESTS.items():
        assert case_id in table, f"{case_id} ({test}) has no row in docs/errors.md"
        path, name = test.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), f"{test} does not exist"
