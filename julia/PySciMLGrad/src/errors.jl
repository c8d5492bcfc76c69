"""
    PSGError(kind, msg)

An error meant for the Python user. Python reads `kind` (with `error_kind`) to pick the
exception class: `"invalid"` and `"invalid_rhs"` -> InvalidProblemError,
`"unsupported_sensealg"` -> UnsupportedSensitivityError, `"solver"` -> a SolverError
chosen from the SciML return code in `msg`, `"cuda_unavailable"` -> BackendUnavailableError.
"""
struct PSGError <: Exception
    kind::String
    msg::String
end

Base.showerror(io::IO, e::PSGError) = print(io, "PySciMLGrad (", e.kind, "): ", e.msg)

"""Whether `e` is a `PSGError` (Python cannot dispatch on Julia types)."""
is_psg_error(e) = e isa PSGError

error_kind(e::PSGError) = e.kind

error_message(e::PSGError) = e.msg
