/*
 * The exit guard: calls into CPython that cannot unwind into Rust frames.
 *
 * Up to CPython 3.13, a thread that takes the GIL back while the interpreter is finalizing
 * calls pthread_exit(), which force-unwinds its stack; a forced unwind that reaches Rust frames
 * aborts the process (SIGABRT). Our worker threads call Python handlers, and a handler still
 * running at exit (time.sleep in a loop, say) takes the GIL back whenever it wakes.
 *
 * Each function below registers a glibc cancellation buffer around one direct call into CPython
 * (the setjmp form of pthread_cleanup_push: this file is compiled as C without -fexceptions).
 * A forced unwind then longjmps back to this frame before any Rust frame is touched, and the
 * cleanup routine parks the thread for good: the handler is abandoned, the process exits
 * normally with the status its main thread chose.
 *
 * No Python.h: the functions are resolved from the running interpreter, as pyo3-ffi's are.
 */
#include <pthread.h>
#include <stddef.h>
#include <unistd.h>

#if defined(__EXCEPTIONS) || defined(__cplusplus)
#error "exit_guard.c must be compiled as C without -fexceptions"
#endif

typedef struct _object PyObject;

extern PyObject *PyObject_Call(PyObject *callable, PyObject *args, PyObject *kwargs);

static void rnq_park_forever(void *unused)
{
    (void)unused;
    for (;;)
        pause();
}

/* PyObject_Call(callable, args, kwargs), guarded. */
PyObject *rnq_guarded_call(PyObject *callable, PyObject *args, PyObject *kwargs)
{
    PyObject *result;
    pthread_cleanup_push(rnq_park_forever, NULL);
    result = PyObject_Call(callable, args, kwargs);
    pthread_cleanup_pop(0);
    return result;
}
