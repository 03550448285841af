package imagegen

import (
	"encoding/binary"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Long names used by [AllFeatures]; exported so tests can look them up.
var (
	// LongDir is a directory whose name (120 bytes) needs a PAX path.
	LongDir = "long/" + strings.Repeat("d", 120)
	// LongFile is a file below LongDir; its path is 276 bytes.
	LongFile = LongDir + "/" + strings.Repeat("f", 150)
	// LongTarget is the 301-byte target of the symlink links/long-target.
	LongTarget = "/" + strings.Repeat("target/", 43)
)

// CapNetBindService is a security.capability value (VFS_CAP_REVISION_2,
// effective) granting CAP_NET_BIND_SERVICE, as `setcap
// cap_net_bind_service=ep` writes it.
var CapNetBindService = func() string {
	var b [20]byte
	binary.LittleEndian.PutUint32(b[0:], 0x02000000|0x1) // revision 2 | effective
	binary.LittleEndian.PutUint32(b[4:], 1<<10)          // permitted[0]: CAP_NET_BIND_SERVICE
	return string(b[:])
}()

// AllFeatures returns the canonical feature image: six layers (gzip, zstd in
// several frames, gzip at level 9, an empty uncompressed layer, a duplicate
// of the third layer, and an uncompressed layer) with about 6 MB of file
// data. Every layer that touches a directory also carries that directory's
// entry, as image builders do, so directory metadata is defined by the
// layers alone. Every layer is seekable (no single-frame zstd), so the
// image is eligible for streaming.
//
// After all layers are applied the tree holds, among others:
//
//   - data/small.bin and links/hard-small: one inode, nlink 2 (hard link
//     across directories); data/multi.bin, data/multi-hl1, etc/multi-hl2:
//     nlink 3; data/random.bin and links/hard-xlayer: nlink 2, linked in a
//     later layer than the file (hard link across layers);
//   - links/rel, links/abs, links/dangling, links/abs-dangling, links/dir,
//     links/escape (relative target climbing out of the root) and
//     links/long-target (-> LongTarget);
//   - no data/deleteme.txt, deleteme-dir, data/zeros.bin or dup/a.txt
//     (whiteouts); opaque/ holds only upper-file (opaque directory; its
//     marker comes after upper-file in the layer);
//   - etc/becomes-file is a file (was a directory), data/becomes-dir is a
//     directory (was a file), links/to-be-file is a file (was a symlink),
//     etc/hostname has the second layer's content;
//   - bin/tool with security.capability (CapNetBindService) and
//     user.comment; xattr-dir (a directory with user.* xattrs) and
//     xattr-dir/file (several user.* xattrs, one binary);
//   - bin/suid (04755), bin/sgid (02755), bin/suid-sgid (06755), tmp
//     (01777), shared (02775), etc/shadow (0000);
//   - special/null (char 1:3), special/loop7 (block 7:7), special/fifo;
//   - owners/big-uid (100000:100000), owners/huge-uid (3000000:4000000,
//     beyond the octal header field), owners/nobody (65534:65534);
//   - LongFile and long/hl-to-long, a hard link to it;
//   - data/nanos (sub-second mtime), data/future (mtime in 2040);
//   - data/unicode ünïcödé ✓.txt, data/empty (0 bytes), data/zeros.bin
//     (deleted later), data/big.bin (3 MiB), data/zstd-payload.bin (in
//     frames), dup/b.bin.
func AllFeatures() Spec {
	t0 := DefaultTime
	sub := t0.Add(500 * time.Millisecond)
	dup := Layer{
		Compression: Gzip,
		Level:       9,
		Comment:     "duplicate layer (appears twice)",
		Entries: []Entry{
			{Type: Dir, Name: "dup"},
			{Type: File, Name: "dup/a.txt", Data: []byte("duplicate layer\n")},
			{Type: File, Name: "dup/b.bin", Size: 64 << 10, Seed: 20},
		},
	}
	return Spec{
		Config: defaultConfig(),
		Layers: []Layer{
			{
				Compression: Gzip,
				Comment:     "base",
				Entries: []Entry{
					{Type: Dir, Name: "bin"},
					{Type: File, Name: "bin/tool", Mode: 0o755, Size: 2000, Seed: 10, Xattrs: map[string]string{
						"security.capability": CapNetBindService,
						"user.comment":        "a tool",
					}},
					{Type: File, Name: "bin/suid", Mode: 0o4755, Size: 100, Seed: 11},
					{Type: File, Name: "bin/sgid", Mode: 0o2755, GID: 50, Size: 100, Seed: 12},
					{Type: File, Name: "bin/suid-sgid", Mode: 0o6755, Size: 100, Seed: 13},

					{Type: Dir, Name: "data", ModTime: sub},
					{Type: File, Name: "data/empty", Data: []byte{}},
					{Type: File, Name: "data/small.bin", Size: 1000, Seed: 1},
					{Type: File, Name: "data/big.bin", Size: 3 << 20, Seed: 2},
					{Type: File, Name: "data/random.bin", Size: 600 << 10, Seed: 3, Fill: Random},
					{Type: File, Name: "data/zeros.bin", Size: 1 << 20, Fill: Zeros},
					{Type: File, Name: "data/multi.bin", Mode: 0o640, UID: 1000, GID: 1000, Size: 5000, Seed: 4},
					{Type: Hardlink, Name: "data/multi-hl1", Linkname: "data/multi.bin"},
					{Type: File, Name: "data/deleteme.txt", Data: []byte("deleted by layer 1\n")},
					{Type: File, Name: "data/becomes-dir", Data: []byte("a file in layer 0\n")},
					{Type: File, Name: "data/unicode ünïcödé ✓.txt", Data: []byte("unicode\n")},
					{Type: File, Name: "data/nanos", ModTime: t0.Add(123456789 * time.Nanosecond), Data: []byte("nanos\n")},
					{Type: File, Name: "data/future", ModTime: time.Date(2040, 1, 2, 3, 4, 5, 0, time.UTC), Data: []byte("future\n")},
					{Type: Dir, Name: "data/sub", Mode: 0o750},
					{Type: File, Name: "data/sub/nested.txt", Data: []byte("nested\n")},

					{Type: Dir, Name: "deleteme-dir"},
					{Type: Dir, Name: "deleteme-dir/inner"},
					{Type: File, Name: "deleteme-dir/inner/f", Data: []byte("gone\n")},

					{Type: Dir, Name: "etc"},
					{Type: File, Name: "etc/hostname", Data: []byte("riffle-base\n")},
					{Type: File, Name: "etc/os-release", Data: []byte("ID=riffle-test\n")},
					{Type: File, Name: "etc/shadow", Mode: ZeroMode, GID: 42, Data: []byte("root:*:19000:0:99999:7:::\n")},
					{Type: Hardlink, Name: "etc/multi-hl2", Linkname: "data/multi.bin"},
					{Type: Dir, Name: "etc/becomes-file"},
					{Type: File, Name: "etc/becomes-file/child", Data: []byte("hidden later\n")},

					{Type: Dir, Name: "links"},
					{Type: Symlink, Name: "links/rel", Linkname: "../data/small.bin"},
					{Type: Symlink, Name: "links/abs", Linkname: "/data/small.bin", ModTime: sub},
					{Type: Symlink, Name: "links/dangling", Linkname: "../does/not/exist"},
					{Type: Symlink, Name: "links/abs-dangling", Linkname: "/nonexistent"},
					{Type: Symlink, Name: "links/dir", Linkname: "../data/sub"},
					{Type: Symlink, Name: "links/escape", Linkname: "../../../../etc/passwd"},
					{Type: Symlink, Name: "links/long-target", Linkname: LongTarget},
					{Type: Symlink, Name: "links/to-be-file", Linkname: "rel"},
					{Type: Hardlink, Name: "links/hard-small", Linkname: "data/small.bin"},

					{Type: Dir, Name: "long"},
					{Type: Dir, Name: LongDir},
					{Type: File, Name: LongFile, Size: 3000, Seed: 5},
					{Type: Hardlink, Name: "long/hl-to-long", Linkname: LongFile},

					{Type: Dir, Name: "opaque"},
					{Type: File, Name: "opaque/lower-file", Data: []byte("hidden by opaque\n")},
					{Type: Dir, Name: "opaque/lower-dir"},
					{Type: File, Name: "opaque/lower-dir/f", Data: []byte("hidden by opaque\n")},

					{Type: Dir, Name: "owners"},
					{Type: File, Name: "owners/big-uid", UID: 100000, GID: 100000, Data: []byte("big uid\n")},
					{Type: File, Name: "owners/huge-uid", UID: 3000000, GID: 4000000, Data: []byte("huge uid\n")},
					{Type: File, Name: "owners/nobody", UID: 65534, GID: 65534, Data: []byte("nobody\n")},

					{Type: Dir, Name: "shared", Mode: 0o2775, GID: 50},
					{Type: Dir, Name: "special"},
					{Type: CharDevice, Name: "special/null", Devmajor: 1, Devminor: 3},
					{Type: BlockDevice, Name: "special/loop7", Mode: 0o660, GID: 6, Devmajor: 7, Devminor: 7},
					{Type: Fifo, Name: "special/fifo", Mode: 0o644},
					{Type: Dir, Name: "tmp", Mode: 0o1777},

					{Type: Dir, Name: "xattr-dir", Xattrs: map[string]string{"user.dir": "1"}},
					{Type: File, Name: "xattr-dir/file", Data: []byte("xattrs\n"), Xattrs: map[string]string{
						"user.a":      "1",
						"user.binary": "\x00\x01\xfe\xff",
						"user.long":   strings.Repeat("x", 1000),
					}},
				},
			},
			{
				Compression:   Zstd,
				ZstdFrameSize: 128 << 10,
				Comment:       "changes: whiteouts, opaque directory, replacements",
				Entries: []Entry{
					{Type: Whiteout, Name: "deleteme-dir"},
					{Type: Dir, Name: "data", ModTime: sub},
					{Type: Whiteout, Name: "data/deleteme.txt"},
					{Type: Dir, Name: "data/becomes-dir"},
					{Type: File, Name: "data/becomes-dir/child", Data: []byte("was a file\n")},
					{Type: File, Name: "data/zstd-payload.bin", Size: 300 << 10, Seed: 6},
					{Type: Dir, Name: "etc"},
					{Type: File, Name: "etc/becomes-file", Data: []byte("was a directory\n")},
					{Type: File, Name: "etc/hostname", Data: []byte("riffle-changed\n")},
					{Type: Dir, Name: "links"},
					{Type: File, Name: "links/to-be-file", Data: []byte("was a symlink\n")},
					{Type: Hardlink, Name: "links/hard-xlayer", Linkname: "data/random.bin"},
					{Type: Dir, Name: "opaque"},
					{Type: File, Name: "opaque/upper-file", Data: []byte("above the opaque marker\n")},
					{Type: Opaque, Name: "opaque"},
				},
			},
			dup,
			{Compression: Uncompressed, Comment: "empty layer"},
			dup,
			{
				Compression: Uncompressed,
				Comment:     "late changes",
				Entries: []Entry{
					{Type: Dir, Name: "data", ModTime: sub},
					{Type: Whiteout, Name: "data/zeros.bin"},
					{Type: Whiteout, Name: "data/never-existed"},
					{Type: File, Name: "data/late.txt", Data: []byte("late\n")},
					{Type: Dir, Name: "dup"},
					{Type: Whiteout, Name: "dup/a.txt"},
				},
			},
		},
	}
}

// Large returns a 5-layer image whose second layer holds one file,
// big/blob.bin, of size bytes of Mixed content (so the gzip layer is about
// half that). The other layers are small: gzip, zstd in 4 MiB frames, an
// uncompressed layer, and a gzip layer with a whiteout.
func Large(size int64) Spec {
	return Spec{
		Config: defaultConfig(),
		Layers: []Layer{
			{Comment: "base", Entries: []Entry{
				{Type: Dir, Name: "etc"},
				{Type: File, Name: "etc/hostname", Data: []byte("riffle-large\n")},
				{Type: File, Name: "etc/motd", Data: []byte("deleted in the last layer\n")},
			}},
			{Comment: "large file", Entries: []Entry{
				{Type: Dir, Name: "big"},
				{Type: File, Name: "big/blob.bin", Size: size, Seed: 42},
			}},
			{Compression: Zstd, ZstdFrameSize: 4 << 20, Comment: "zstd", Entries: []Entry{
				{Type: Dir, Name: "lib"},
				{Type: File, Name: "lib/lib.so", Mode: 0o755, Size: 2 << 20, Seed: 43},
			}},
			{Compression: Uncompressed, Comment: "uncompressed", Entries: []Entry{
				{Type: Dir, Name: "bin"},
				{Type: File, Name: "bin/app", Mode: 0o755, Size: 256 << 10, Seed: 44},
				{Type: Symlink, Name: "bin/sh", Linkname: "app"},
			}},
			{Comment: "whiteout", Entries: []Entry{
				{Type: Dir, Name: "etc"},
				{Type: Whiteout, Name: "etc/motd"},
			}},
		},
	}
}

func defaultConfig() v1.Config {
	return v1.Config{
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Cmd: []string{"/bin/sh"},
	}
}
