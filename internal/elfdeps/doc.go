// Package elfdeps reads which shared libraries an ELF object needs, the
// way a loader finds them: from its program headers and dynamic section
// (DT_NEEDED, DT_RUNPATH, DT_RPATH), reading as little of the file as it
// can, so that streamfs can fetch a program's libraries from a lazily
// fetched image before the loader asks for them. It imports nothing of
// Riffle's.
package elfdeps
