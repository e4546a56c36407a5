#!/usr/bin/env bash
# Fetch a few real CT volumes for smoke tests and geometry checks.
#
# Source: the TotalSegmentator 2.18.0 source package on PyPI, whose tests/reference_files hold
# small example CTs of one patient and that tool's own model outputs on them. The labels are
# model predictions, not expert annotations: fine for smoke tests and geometry, not a benchmark.
#
# Result (repo-relative, ignored by git):
#   sample-ct/totalseg/            nnU-Net v2 layout, usable as `lrc prep -i sample-ct/totalseg`
#     dataset.json                 the 117 "total" class names
#     imagesTr/example_ct_sm_0000.nii.gz   122x101x30  int16, 3 mm, RAS, sform only
#     labelsTr/example_ct_sm.nii.gz        its labels (uint8)
#     imagesTr/example_ct_0000.nii.gz      122x101x112 int32, 3 mm, RAS, sform only
#     labelsTr/example_ct.nii.gz           its labels (uint8)
#   sample-ct/extra/
#     aorta_ct.nii.gz              233x167x191 int16, 1.5 mm, LPS (a larger real CT)
#     example_mr_sm.nii.gz         an MR image (non-CT intensities, for the rejection test)
#     example_seg_dicom.nii.gz     a 512x512x20 label map in LAS orientation with pixdim[0] = -1
#
# Usage: scripts/fetch-sample-ct.sh [DEST]   (DEST defaults to sample-ct/ at the repository root)
# Needs python3 with pip, and network access to PyPI. Idempotent: does nothing if DEST is complete.
set -euo pipefail

VERSION=2.18.0
SHA256=5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/sample-ct}"
MARKER="$DEST/.complete-$VERSION"

if [[ -f "$MARKER" ]]; then
    echo "sample CT already present in $DEST"
    exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "downloading TotalSegmentator $VERSION source package from PyPI ..."
python3 -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
    "totalsegmentator==$VERSION" -d "$WORK" 2>"$WORK/pip.log" ||
    python3 -m pip download --quiet --no-deps --no-binary :all: "totalsegmentator==$VERSION" -d "$WORK" || {
    cat "$WORK/pip.log" >&2
    echo "error: pip download of totalsegmentator==$VERSION failed" >&2
    exit 1
}
TARBALL="$WORK/totalsegmentator-$VERSION.tar.gz"
if [[ ! -f "$TARBALL" ]]; then
    echo "error: expected $TARBALL after pip download" >&2
    exit 1
fi
echo "$SHA256  $TARBALL" | sha256sum --check --quiet - || {
    echo "error: checksum mismatch for $TARBALL" >&2
    exit 1
}

PREFIX="totalsegmentator-$VERSION"
REF="$PREFIX/tests/reference_files"
tar -xzf "$TARBALL" -C "$WORK" \
    "$REF/example_ct_sm.nii.gz" "$REF/example_seg.nii.gz" \
    "$REF/example_ct.nii.gz" "$REF/example_seg_fast_force_split.nii.gz" \
    "$REF/aorta_report/example_ct.nii.gz" "$REF/example_mr_sm.nii.gz" \
    "$REF/example_seg_dicom.nii.gz" "$PREFIX/totalsegmentator/map_to_binary.py"

STAGE="$WORK/stage"
mkdir -p "$STAGE/totalseg/imagesTr" "$STAGE/totalseg/labelsTr" "$STAGE/extra"
cp "$WORK/$REF/example_ct_sm.nii.gz" "$STAGE/totalseg/imagesTr/example_ct_sm_0000.nii.gz"
cp "$WORK/$REF/example_seg.nii.gz" "$STAGE/totalseg/labelsTr/example_ct_sm.nii.gz"
cp "$WORK/$REF/example_ct.nii.gz" "$STAGE/totalseg/imagesTr/example_ct_0000.nii.gz"
cp "$WORK/$REF/example_seg_fast_force_split.nii.gz" "$STAGE/totalseg/labelsTr/example_ct.nii.gz"
cp "$WORK/$REF/aorta_report/example_ct.nii.gz" "$STAGE/extra/aorta_ct.nii.gz"
cp "$WORK/$REF/example_mr_sm.nii.gz" "$STAGE/extra/example_mr_sm.nii.gz"
cp "$WORK/$REF/example_seg_dicom.nii.gz" "$STAGE/extra/example_seg_dicom.nii.gz"

# dataset.json from the package's own class map (read as a literal, nothing is imported).
python3 - "$WORK/$PREFIX/totalsegmentator/map_to_binary.py" "$STAGE/totalseg/dataset.json" <<'EOF'
import ast, json, sys
tree = ast.parse(open(sys.argv[1]).read())
class_map = None
for node in tree.body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "class_map":
        class_map = ast.literal_eval(node.value)
if class_map is None or "total" not in class_map:
    sys.exit("error: class_map['total'] not found in map_to_binary.py")
labels = {"background": 0}
for value, name in sorted(class_map["total"].items()):
    labels[name] = int(value)
dataset = {
    "name": "TotalSegmentator reference examples (model outputs, not ground truth)",
    "channel_names": {"0": "CT"},
    "labels": labels,
    "numTraining": 2,
    "file_ending": ".nii.gz",
}
json.dump(dataset, open(sys.argv[2], "w"), indent=2)
EOF

mkdir -p "$DEST"
rm -rf "$DEST/totalseg" "$DEST/extra"
mv "$STAGE/totalseg" "$STAGE/extra" "$DEST/"
touch "$MARKER"
echo "sample CT written to $DEST"
