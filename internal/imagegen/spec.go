package imagegen

import (
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Type is the kind of a tar entry in a [Layer].
type Type int

const (
	// File is a regular file whose content is Entry.Data, or, when Data is
	// nil, Entry.Size bytes of [Content](Entry.Seed, Entry.Size, Entry.Fill).
	File Type = iota
	// Dir is a directory. Its tar name gets a trailing slash.
	Dir
	// Symlink is a symbolic link to Entry.Linkname (any string: relative,
	// absolute, dangling).
	Symlink
	// Hardlink is a hard link to the earlier entry named Entry.Linkname, in
	// this layer or a lower one. Mode, UID, GID, ModTime and Xattrs that
	// are all zero are copied from the latest File of that name in the
	// Spec, as tar writers record the shared inode's metadata.
	Hardlink
	// CharDevice is a character device (Devmajor, Devminor).
	CharDevice
	// BlockDevice is a block device (Devmajor, Devminor).
	BlockDevice
	// Fifo is a named pipe.
	Fifo
	// Whiteout deletes Entry.Name from the lower layers; it is written as
	// DIR/.wh.BASE.
	Whiteout
	// Opaque hides everything the lower layers hold in the directory
	// Entry.Name; it is written as NAME/.wh..wh..opq. The directory
	// itself must also be in the layer (as a Dir entry) or below it.
	Opaque
)

// String returns the name of t.
func (t Type) String() string {
	switch t {
	case File:
		return "file"
	case Dir:
		return "dir"
	case Symlink:
		return "symlink"
	case Hardlink:
		return "hardlink"
	case CharDevice:
		return "char"
	case BlockDevice:
		return "block"
	case Fifo:
		return "fifo"
	case Whiteout:
		return "whiteout"
	case Opaque:
		return "opaque"
	}
	return "type(?)"
}

// Entry is one tar entry of a layer.
type Entry struct {
	Type Type
	// Name is the path in the image, slash-separated and normally
	// relative ("usr/bin/ls"). It is written as given (a Dir gets a
	// trailing slash), so hostile names such as "../x" can be built.
	Name string
	// Mode holds the permission bits and the setuid (04000), setgid
	// (02000) and sticky (01000) bits. Zero means the default: 0644 for
	// files, 0755 for directories, 0777 for symlinks, 0666 for devices and
	// fifos, 0 for whiteouts. Use ZeroMode for a mode of 0000.
	Mode     int64
	UID, GID int
	// ModTime zero means Spec.Created (or DefaultTime). Sub-second times
	// are kept: every header is written in PAX format.
	ModTime time.Time
	// Linkname is the target of a Symlink or Hardlink.
	Linkname string
	// Devmajor and Devminor are the device numbers of a CharDevice or
	// BlockDevice.
	Devmajor, Devminor int64
	// Xattrs become PAX SCHILY.xattr.NAME records, e.g. "user.comment" or
	// "security.capability" (binary values are fine).
	Xattrs map[string]string

	// Data is the literal content of a File. When nil, the content is
	// generated: Size bytes from Seed, shaped by Fill.
	Data []byte
	Size int64
	Seed uint64
	Fill Fill
}

// ZeroMode as Entry.Mode asks for permission bits 0000 (as Fedora's
// /etc/shadow has), which the zero value cannot say.
const ZeroMode int64 = -1

// Compression is how a layer blob is compressed.
type Compression int

const (
	// Gzip is the zero value, as most registry layers are gzip.
	Gzip Compression = iota
	// Zstd layers need the OCI media types.
	Zstd
	// Uncompressed layers are plain tar.
	Uncompressed
)

// String returns the name of c.
func (c Compression) String() string {
	switch c {
	case Gzip:
		return "gzip"
	case Zstd:
		return "zstd"
	case Uncompressed:
		return "uncompressed"
	}
	return "compression(?)"
}

// Layer is one layer of a [Spec].
type Layer struct {
	// Entries are written in order. An empty list makes an empty layer (a
	// tar of only the end-of-archive marker).
	Entries     []Entry
	Compression Compression
	// Level is the compressor's level: for gzip 1..9 (0 means 1, fast),
	// for zstd a klauspost/compress zstd.EncoderLevel (0 means fastest).
	Level int
	// ZstdFrameSize, when positive, cuts a zstd layer into independent
	// frames of that many uncompressed bytes (the shape a frame-table index
	// can seek in). Zero writes one frame, which is not seekable.
	ZstdFrameSize int64
	// Comment goes into the image history ("created_by").
	Comment string
}

// Format selects the manifest, config and layer media types.
type Format int

const (
	// OCI media types (application/vnd.oci.image.*). The default.
	OCI Format = iota
	// Docker schema 2 media types (application/vnd.docker.*). Docker has
	// no zstd layer type, so zstd layers are refused.
	Docker
)

// String returns the name of f.
func (f Format) String() string {
	if f == Docker {
		return "docker"
	}
	return "oci"
}

// DefaultTime is the time of entries and of the image when the Spec sets
// none, fixed so that images are reproducible.
var DefaultTime = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// Spec describes an image to [Build].
type Spec struct {
	Layers []Layer
	Format Format
	// Created is the image's creation time and the default entry time;
	// zero means DefaultTime.
	Created time.Time
	// OS and Architecture of the image config; empty means linux and the
	// architecture Riffle runs on.
	OS, Architecture string
	// Config is the runtime configuration (Env, Entrypoint, Cmd, ...).
	Config v1.Config
}

// Docker returns a copy of s with Docker schema 2 media types, and its zstd
// layers turned into gzip layers, as Docker has no zstd layer type.
func (s Spec) Docker() Spec {
	out := s
	out.Format = Docker
	out.Layers = make([]Layer, len(s.Layers))
	for i, l := range s.Layers {
		if l.Compression == Zstd {
			l.Compression = Gzip
			l.Level = 0
			l.ZstdFrameSize = 0
		}
		out.Layers[i] = l
	}
	return out
}
