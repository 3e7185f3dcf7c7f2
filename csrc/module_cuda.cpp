// Makes the CUDA kernels' shared library importable as qmixprune._C_cuda. Importing it (after
// qmixprune._C, which defines the ops) registers the CUDA kernels of cuda/*.cu. A separate
// extension, so that a failed CUDA build still leaves the CPU kernels of qmixprune._C.
#include <Python.h>

static struct PyModuleDef qmixprune_cuda_module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1,
                                                   nullptr};

PyMODINIT_FUNC PyInit__C_cuda(void) { return PyModule_Create(&qmixprune_cuda_module); }
