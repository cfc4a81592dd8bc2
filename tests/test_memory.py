"""Large files written in slices, a job's arrays saved as .npy files that np.load reads back, and
large arrays mapped at once."""

from __future__ import annotations

import io

import numpy as np
import pytest

from boostream import memory


class Recording(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, data) -> int:
        self.sizes.append(len(data))
        return super().write(data)


def test_write_all_writes_every_byte_in_small_slices():
    data = np.random.default_rng(0).bytes(3 * memory.WRITE_SLICE_BYTES + 123)
    file = Recording()
    memory.write_all(file, bytearray(data))
    assert file.getvalue() == data
    assert max(file.sizes) == memory.WRITE_SLICE_BYTES and len(file.sizes) == 4


ARRAYS = {
    "C order": np.arange(600.0).reshape(200, 3),
    "Fortran order": np.asfortranarray(np.arange(600.0).reshape(200, 3)),
    "a strided view": np.arange(1200.0).reshape(200, 6)[:, ::2],
    "one dimension": np.linspace(0, 1, 1001),
    "strings": np.array(["setosa", "versicolor", "virginica"]),
    "integers": np.arange(10, dtype=np.int64),
    "empty": np.empty((0, 4)),
}


@pytest.mark.parametrize("array", ARRAYS.values(), ids=ARRAYS.keys())
def test_a_saved_array_loads_back_the_same(tmp_path, array):
    path = tmp_path / "a.npy"
    memory.save_array(path, array)
    loaded = np.load(path, allow_pickle=False, mmap_mode="r" if array.size else None)
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    np.testing.assert_array_equal(loaded, array)
    if array.ndim == 2 and array.flags.f_contiguous and not array.flags.c_contiguous:
        assert loaded.flags.f_contiguous  # kept as it was: no transposing copy


def test_an_array_of_objects_is_not_saved(tmp_path):
    with pytest.raises(ValueError, match="objects"):
        memory.save_array(tmp_path / "a.npy", np.array([{"a": 1}], dtype=object))



ROWS = 4 * memory.MAPPED_MIN_BYTES // (8 * 10)  # a 10-column array of doubles, 4x the threshold


@pytest.mark.parametrize("order", ["C", "F"])
def test_empty_gives_a_writable_array_of_the_shape_type_and_order_asked(order):
    for shape, dtype in [((ROWS, 10), np.float64), ((ROWS * 2, 10), np.float32), ((7, 3), np.float64)]:
        array = memory.empty(shape, dtype, order=order)
        assert array.shape == shape and array.dtype == dtype and array.flags.writeable
        assert array.flags.f_contiguous if order == "F" else array.flags.c_contiguous
        array[:] = np.arange(array.size, dtype=dtype).reshape(shape)
        assert array[-1, -1] == array.size - 1
