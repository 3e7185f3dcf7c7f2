// Makes the shared library importable as the Python module qmixprune._C; importing it
// loads the library, which runs the op registrations of ops.cpp and the kernels.
#include <Python.h>

static struct PyModuleDef qmixprune_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&qmixprune_module); }
