"""Signed distance of a triangle mesh on a regular query grid, compiled with numba (one core).

The published pipeline evaluates ``mesh_to_sdf`` at the 32^3 query points of a cell; an exact BVH query
of every grid point (``fcpw``) costs ~21 ms, most of it spent on points far from the surface. Here:

1. **Narrow band, exact.** Every triangle visits the grid points in its bounding box grown by
   ``band`` (in grid spacings) and keeps the exact point-triangle distance (Ericson, *Real-Time
   Collision Detection*, 5.1.5) and closest point. A grid point whose distance is at most the band
   radius lies in the grown box of its true closest triangle, so its value is exact. The default band
   of 2 spacings halves the far-field error of 1.5 spacings for ~5-30 % more time.
2. **Far field, closest-point propagation.** Eight raster sweeps (one per octant direction, as in
   Bridson's ``makelevelset3``) let each point try the closest surface points of its 7 upwind
   neighbours; a final pass takes the exact distance to the triangle that owns the chosen point. Every
   value is the distance to a point on the mesh, so it can only over-estimate. Largest error against
   the exact distance: 1.5e-3 of the box edge on the 20 real cells of ``benchmarks/bench_sdf.py``,
   2.7e-3 on 40 synthetic multi-piece nucleolus-like cells (the budget is 1e-2).
3. **Sign by ray parity along x.** Each triangle is rasterised onto the grid lines (y, z) that its
   projection covers; the crossing's x toggles the inside/outside state of the grid points beyond it.
   The 2D edge tests are evaluated on each edge's canonical vertex order with a symbolic perturbation
   for zeros, so two triangles sharing an edge always agree and a line through a vertex or an edge is
   counted once. A closed mesh gives an even count on every line and no sign change between neighbours
   that are both farther from the surface than half their spacing; lines that break either rule (an
   open mesh, a hole) are returned so that the caller can sign them by the winding number instead.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np


@nb.njit(cache=True, inline="always")
def _closest_on_triangle(px, py, pz, ax, ay, az, bx, by, bz, cx, cy, cz):
    """Closest point of triangle abc to p (Ericson 5.1.5: Voronoi regions of vertices, edges, face)."""
    abx = bx - ax
    aby = by - ay
    abz = bz - az
    acx = cx - ax
    acy = cy - ay
    acz = cz - az
    apx = px - ax
    apy = py - ay
    apz = pz - az
    d1 = abx * apx + aby * apy + abz * apz
    d2 = acx * apx + acy * apy + acz * apz
    if d1 <= 0.0 and d2 <= 0.0:
        return ax, ay, az
    bpx = px - bx
    bpy = py - by
    bpz = pz - bz
    d3 = abx * bpx + aby * bpy + abz * bpz
    d4 = acx * bpx + acy * bpy + acz * bpz
    if d3 >= 0.0 and d4 <= d3:
        return bx, by, bz
    vc = d1 * d4 - d3 * d2
    if vc <= 0.0 and d1 >= 0.0 and d3 <= 0.0:
        v = d1 / (d1 - d3)
        return ax + v * abx, ay + v * aby, az + v * abz
    cpx = px - cx
    cpy = py - cy
    cpz = pz - cz
    d5 = abx * cpx + aby * cpy + abz * cpz
    d6 = acx * cpx + acy * cpy + acz * cpz
    if d6 >= 0.0 and d5 <= d6:
        return cx, cy, cz
    vb = d5 * d2 - d1 * d6
    if vb <= 0.0 and d2 >= 0.0 and d6 <= 0.0:
        w = d2 / (d2 - d6)
        return ax + w * acx, ay + w * acy, az + w * acz
    va = d3 * d6 - d5 * d4
    if va <= 0.0 and (d4 - d3) >= 0.0 and (d5 - d6) >= 0.0:
        w = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        return bx + w * (cx - bx), by + w * (cy - by), bz + w * (cz - bz)
    denom = 1.0 / (va + vb + vc)
    v = vb * denom
    w = vc * denom
    return ax + abx * v + acx * w, ay + aby * v + acy * w, az + abz * v + acz * w


@nb.njit(cache=True)
def _band(verts, faces, g, lo, h, rad, d2, tri, cp):
    """Exact squared distance, closest triangle and point for grid points near each triangle."""
    n = g.shape[0]
    margin = rad + 1e-9 * h
    i0 = np.empty(3, np.int64)
    i1 = np.empty(3, np.int64)
    for t in range(faces.shape[0]):
        a = faces[t, 0]
        b = faces[t, 1]
        c = faces[t, 2]
        for k in range(3):
            mn = min(verts[a, k], verts[b, k], verts[c, k]) - margin
            mx = max(verts[a, k], verts[b, k], verts[c, k]) + margin
            i0[k] = max(0, int(math.ceil((mn - lo) / h)))
            i1[k] = min(n - 1, int(math.floor((mx - lo) / h)))
        for iz in range(i0[2], i1[2] + 1):
            pz = g[iz]
            for iy in range(i0[1], i1[1] + 1):
                py = g[iy]
                for ix in range(i0[0], i1[0] + 1):
                    px = g[ix]
                    qx, qy, qz = _closest_on_triangle(
                        px, py, pz,
                        verts[a, 0], verts[a, 1], verts[a, 2],
                        verts[b, 0], verts[b, 1], verts[b, 2],
                        verts[c, 0], verts[c, 1], verts[c, 2],
                    )  # fmt: skip
                    dd = (px - qx) ** 2 + (py - qy) ** 2 + (pz - qz) ** 2
                    idx = (iz * n + iy) * n + ix
                    if dd < d2[idx]:
                        d2[idx] = dd
                        tri[idx] = t
                        cp[idx, 0] = qx
                        cp[idx, 1] = qy
                        cp[idx, 2] = qz


@nb.njit(cache=True)
def _sweep(g, d2, tri, cp, rad2):
    """Eight octant sweeps: each far point tries the closest surface points of its 7 upwind neighbours.

    Points without a value yet hold a closest point at 1e200, whose squared distance overflows to inf.
    """
    n = g.shape[0]
    off = np.empty(8, np.int64)
    for s in range(8):
        dx = 1 if s & 1 else -1
        dy = 1 if s & 2 else -1
        dz = 1 if s & 4 else -1
        for m in range(8):
            off[m] = -(dx * (m & 1) + dy * n * ((m >> 1) & 1) + dz * n * n * ((m >> 2) & 1))
        for kz in range(n):
            iz = kz if dz > 0 else n - 1 - kz
            pz = g[iz]
            for ky in range(n):
                iy = ky if dy > 0 else n - 1 - ky
                py = g[iy]
                edge = kz == 0 or ky == 0
                for kx in range(n):
                    ix = kx if dx > 0 else n - 1 - kx
                    idx = (iz * n + iy) * n + ix
                    best = d2[idx]
                    if best <= rad2:
                        continue
                    px = g[ix]
                    bj = -1
                    if edge or kx == 0:
                        for m in range(1, 8):
                            if (m & 1 and kx == 0) or (m & 2 and ky == 0) or (m & 4 and kz == 0):
                                continue
                            j = idx + off[m]
                            dd = (px - cp[j, 0]) ** 2 + (py - cp[j, 1]) ** 2 + (pz - cp[j, 2]) ** 2
                            if dd < best:
                                best = dd
                                bj = j
                    else:
                        for m in range(1, 8):
                            j = idx + off[m]
                            dd = (px - cp[j, 0]) ** 2 + (py - cp[j, 1]) ** 2 + (pz - cp[j, 2]) ** 2
                            if dd < best:
                                best = dd
                                bj = j
                    if bj >= 0:
                        d2[idx] = best
                        tri[idx] = tri[bj]
                        cp[idx, 0] = cp[bj, 0]
                        cp[idx, 1] = cp[bj, 1]
                        cp[idx, 2] = cp[bj, 2]


@nb.njit(cache=True)
def _finish(verts, faces, g, d2, tri, rad2):
    """Far points: exact distance to the triangle that owns their propagated closest point."""
    n = g.shape[0]
    for idx in range(n * n * n):
        if d2[idx] <= rad2 or tri[idx] < 0:
            continue
        t = tri[idx]
        a = faces[t, 0]
        b = faces[t, 1]
        c = faces[t, 2]
        px = g[idx % n]
        py = g[(idx // n) % n]
        pz = g[idx // (n * n)]
        qx, qy, qz = _closest_on_triangle(
            px, py, pz,
            verts[a, 0], verts[a, 1], verts[a, 2],
            verts[b, 0], verts[b, 1], verts[b, 2],
            verts[c, 0], verts[c, 1], verts[c, 2],
        )  # fmt: skip
        dd = (px - qx) ** 2 + (py - qy) ** 2 + (pz - qz) ** 2
        if dd < d2[idx]:
            d2[idx] = dd


@nb.njit(cache=True, inline="always")
def _edge_side(verts, i, j, pu, pv):
    """Side of (pu, pv) of the projected edge i -> j in the (y, z) plane, never zero for a proper edge.

    Evaluated on the canonical order (lower vertex index first) and negated for the other direction, so
    the two triangles sharing an edge see the same number. A zero is broken by the symbolic
    perturbation p + (eps, eps^2), which depends on the edge alone.
    """
    if i < j:
        a, b, s = i, j, 1.0
    else:
        a, b, s = j, i, -1.0
    au = verts[a, 1]
    av = verts[a, 2]
    bu = verts[b, 1]
    bv = verts[b, 2]
    o = (bu - au) * (pv - av) - (bv - av) * (pu - au)
    if o == 0.0:
        e = -(bv - av) if bv != av else bu - au
        o = 1e-300 if e > 0.0 else (-1e-300 if e < 0.0 else 0.0)
    return s * o


@nb.njit(cache=True)
def _ray_parity(verts, faces, g, lo, h, toggle, count):
    """Crossings of the x-parallel grid lines with the triangles: toggles at the first grid point beyond."""
    n = g.shape[0]
    eps = 1e-9 * h
    for t in range(faces.shape[0]):
        ia = faces[t, 0]
        ib = faces[t, 1]
        ic = faces[t, 2]
        ymn = min(verts[ia, 1], verts[ib, 1], verts[ic, 1]) - eps
        ymx = max(verts[ia, 1], verts[ib, 1], verts[ic, 1]) + eps
        zmn = min(verts[ia, 2], verts[ib, 2], verts[ic, 2]) - eps
        zmx = max(verts[ia, 2], verts[ib, 2], verts[ic, 2]) + eps
        jy0 = max(0, int(math.ceil((ymn - lo) / h)))
        jy1 = min(n - 1, int(math.floor((ymx - lo) / h)))
        jz0 = max(0, int(math.ceil((zmn - lo) / h)))
        jz1 = min(n - 1, int(math.floor((zmx - lo) / h)))
        for jz in range(jz0, jz1 + 1):
            pv = g[jz]
            for jy in range(jy0, jy1 + 1):
                pu = g[jy]
                wa = _edge_side(verts, ib, ic, pu, pv)
                wb = _edge_side(verts, ic, ia, pu, pv)
                wc = _edge_side(verts, ia, ib, pu, pv)
                if not ((wa > 0.0 and wb > 0.0 and wc > 0.0) or (wa < 0.0 and wb < 0.0 and wc < 0.0)):
                    continue
                sw = wa + wb + wc
                if abs(sw) > 1e-200:
                    xc = (wa * verts[ia, 0] + wb * verts[ib, 0] + wc * verts[ic, 0]) / sw
                else:
                    xc = (verts[ia, 0] + verts[ib, 0] + verts[ic, 0]) / 3.0
                line = jz * n + jy
                count[line] += 1
                k = max(0, min(n, int(math.floor((xc - lo) / h)) + 1))
                while k > 0 and g[k - 1] > xc:
                    k -= 1
                while k < n and g[k] <= xc:
                    k += 1
                if k < n:
                    toggle[line, k] ^= 1


@nb.njit(cache=True)
def _apply_sign(d, toggle, count, h, tol):
    """Negate the inside points in place; return the lines whose parity cannot be trusted."""
    n = toggle.shape[1]
    bad = np.zeros(n * n, np.bool_)
    for line in range(n * n):
        if count[line] % 2 == 1:
            bad[line] = True
        par = 0
        for ix in range(n):
            par ^= toggle[line, ix]
            if par:
                d[line * n + ix] = -d[line * n + ix]
    # the segment between two neighbours cannot meet the surface if their distances add up to more than
    # the spacing, so their signs must agree
    lim = h + tol
    for iz in range(n):
        for iy in range(n):
            line = iz * n + iy
            for ix in range(n):
                i = line * n + ix
                a = d[i]
                if ix + 1 < n and a * d[i + 1] < 0.0 and abs(a) + abs(d[i + 1]) > lim:
                    bad[line] = True
                if iy + 1 < n and a * d[i + n] < 0.0 and abs(a) + abs(d[i + n]) > lim:
                    bad[line] = True
                    bad[line + 1] = True
                if iz + 1 < n and a * d[i + n * n] < 0.0 and abs(a) + abs(d[i + n * n]) > lim:
                    bad[line] = True
                    bad[line + n] = True
    return bad


def grid_sdf(
    vertices: np.ndarray, faces: np.ndarray, grid: int, band: float = 2.0, lo: float = -1.0, hi: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (negative inside) on ``grid`` points per axis of ``[lo, hi]^3``, and untrusted lines.

    Returns ``(sdf, bad)``: ``sdf`` float64 ``[grid^3]`` in ZYX order (x fastest, the order of
    ``sdf.query_grid``), ``bad`` bool ``[grid^2]`` marking the x-lines ``iz * grid + iy`` whose sign
    fails the parity checks (empty for a closed mesh); the caller re-signs those points.
    """
    if grid < 2:
        raise ValueError(f"grid must be >= 2, got {grid}")
    if band < 1.0:
        raise ValueError(f"band must be at least one grid spacing, got {band}")
    verts = np.ascontiguousarray(vertices, dtype=np.float64)
    tris = np.ascontiguousarray(faces, dtype=np.int64)
    if verts.ndim != 2 or verts.shape[1] != 3 or tris.ndim != 2 or tris.shape[1] != 3 or len(tris) == 0:
        raise ValueError(f"need [n, 3] vertices and a non-empty [m, 3] faces array, got {verts.shape}, {tris.shape}")
    # the coordinates of query_grid (float32 linspace), so that the values belong to exactly those points
    g = np.linspace(lo, hi, grid).astype(np.float32).astype(np.float64)
    h = (hi - lo) / (grid - 1)
    n3 = grid**3
    d2 = np.full(n3, np.inf)
    tri = np.full(n3, -1, dtype=np.int64)
    cp = np.full((n3, 3), 1e200)
    rad = band * h
    _band(verts, tris, g, lo, h, rad, d2, tri, cp)
    _sweep(g, d2, tri, cp, rad * rad)
    _finish(verts, tris, g, d2, tri, rad * rad)
    sdf = np.sqrt(d2)
    toggle = np.zeros((grid * grid, grid), dtype=np.uint8)
    count = np.zeros(grid * grid, dtype=np.int64)
    _ray_parity(verts, tris, g, lo, h, toggle, count)
    bad = _apply_sign(sdf, toggle, count, h, 0.1 * h)
    return sdf, bad
