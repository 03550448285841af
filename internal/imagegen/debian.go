package imagegen

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

// ErrNeedsRoot is returned by [Debian] when not running as root, which
// debootstrap needs (it chroots, chowns and makes device nodes).
var ErrNeedsRoot = errors.New("imagegen: debootstrap needs root")

// DebianOptions configure [Debian].
type DebianOptions struct {
	// CacheDir holds the rootfs tarballs, one per (suite, variant,
	// architecture, includes); required.
	CacheDir string
	// Suite is the Debian release; default "bookworm".
	Suite string
	// Variant is debootstrap's --variant; default "minbase".
	Variant string
	// Include lists extra packages (debootstrap --include), for
	// benchmarks that want a realistic large image (python3-numpy, ...).
	Include []string
	// Mirror is the Debian archive URL. Empty means the one apt on this
	// machine uses for Suite, else debootstrap's default
	// (http://deb.debian.org/debian).
	Mirror string
	// Format of the image (OCI by default). The layers are gzip.
	Format Format
}

// DebianImage is Debian with the defaults: bookworm, minbase, cached in
// cacheDir. Needs root and access to the Debian mirror the first time.
func DebianImage(ctx context.Context, cacheDir string) (v1.Image, error) {
	return Debian(ctx, DebianOptions{CacheDir: cacheDir})
}

// Debian builds a real multi-layer Debian image from a debootstrap rootfs.
// The rootfs is made once and cached as a tarball in opts.CacheDir (under a
// lock, so concurrent test binaries share it), and the layered image is
// cached beside it as an OCI layout, so later calls only open files.
//
// The image has three gzip layers, as images built in several steps do:
//  1. everything under usr/ (most of the data);
//  2. the rest of the root filesystem (hard links from usr/ to files
//     outside it move here, so every link target is in a lower layer),
//     without apt's package lists and caches, as official images do;
//  3. a small layer that restates etc/ and deletes etc/issue.net (or
//     another small file of etc/) through a whiteout.
func Debian(ctx context.Context, opts DebianOptions) (v1.Image, error) {
	if opts.Suite == "" {
		opts.Suite = "bookworm"
	}
	if opts.Variant == "" {
		opts.Variant = "minbase"
	}
	tarPath, err := DebianRootfs(ctx, opts)
	if err != nil {
		return nil, err
	}
	// The layered image is cached too, as an OCI layout beside the
	// tarball: compressing 150 MB costs seconds, and much more under -race.
	// The version in the name changes whenever the layering does.
	layoutDir := strings.TrimSuffix(tarPath, ".tar") + "." + opts.Format.String() + ".layers-v1"
	if img, err := imageFromLayout(layoutDir); err == nil {
		return img, nil
	}
	img, err := debianImageFromTar(tarPath, opts)
	if err != nil {
		return nil, err
	}
	// Best effort: a read-only cache dir still gives an image.
	if tmp, err := os.MkdirTemp(filepath.Dir(layoutDir), filepath.Base(layoutDir)+".tmp-"); err == nil {
		if WriteOCILayout(tmp, img, "debian:"+opts.Suite) == nil && os.Rename(tmp, layoutDir) == nil {
			if cached, err := imageFromLayout(layoutDir); err == nil {
				return cached, nil
			}
		}
		os.RemoveAll(tmp)
	}
	return img, nil
}

func imageFromLayout(dir string) (v1.Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, err
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	if len(m.Manifests) != 1 {
		return nil, fmt.Errorf("imagegen: %s holds %d manifests, want 1", dir, len(m.Manifests))
	}
	return p.Image(m.Manifests[0].Digest)
}

// DebianRootfs returns the path of the cached rootfs tarball for opts,
// running debootstrap first if it is not cached yet.
func DebianRootfs(ctx context.Context, opts DebianOptions) (string, error) {
	if opts.CacheDir == "" {
		return "", errors.New("imagegen: DebianOptions.CacheDir is empty; give a directory to cache the rootfs in, e.g. /var/cache/riffle-test")
	}
	if opts.Suite == "" {
		opts.Suite = "bookworm"
	}
	if opts.Variant == "" {
		opts.Variant = "minbase"
	}
	key := fmt.Sprintf("debian-%s-%s-%s", opts.Suite, opts.Variant, runtime.GOARCH)
	if len(opts.Include) > 0 {
		inc := slices.Clone(opts.Include)
		slices.Sort(inc)
		sum := sha256.Sum256([]byte(strings.Join(inc, ",")))
		key += "-" + hex.EncodeToString(sum[:6])
	}
	tarPath := filepath.Join(opts.CacheDir, key+".tar")
	if _, err := os.Stat(tarPath); err == nil {
		return tarPath, nil
	}
	if os.Geteuid() != 0 {
		return "", ErrNeedsRoot
	}
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return "", fmt.Errorf("imagegen: cache dir: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(opts.CacheDir, key+".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", fmt.Errorf("imagegen: lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return "", fmt.Errorf("imagegen: lock %s: %w", lock.Name(), err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)
	if _, err := os.Stat(tarPath); err == nil {
		return tarPath, nil // another process built it while we waited
	}

	work, err := os.MkdirTemp(opts.CacheDir, key+".build-")
	if err != nil {
		return "", fmt.Errorf("imagegen: %w", err)
	}
	defer removeBuildDir(work)
	rootfs := filepath.Join(work, "rootfs")

	mirror := opts.Mirror
	if mirror == "" {
		mirror = aptMirror(opts.Suite)
	}
	args := []string{"--variant=" + opts.Variant}
	if len(opts.Include) > 0 {
		args = append(args, "--include="+strings.Join(opts.Include, ","))
	}
	args = append(args, opts.Suite, rootfs)
	if mirror != "" {
		args = append(args, mirror)
	}
	cmd := exec.CommandContext(ctx, "debootstrap", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("imagegen: debootstrap %s: %w\n%s", strings.Join(args, " "), err, tail(out.String(), 3000))
	}
	if m := mountsUnder(work); len(m) > 0 {
		return "", fmt.Errorf("imagegen: debootstrap left mounts under %s: %v", work, m)
	}

	tmp := filepath.Join(work, "rootfs.tar")
	if err := tarDir(ctx, rootfs, tmp); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, tarPath); err != nil {
		return "", fmt.Errorf("imagegen: %w", err)
	}
	return tarPath, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// removeBuildDir removes a debootstrap work directory, unmounting what a
// failed debootstrap may have left mounted inside (proc, sys, a bind of
// /dev) first: removing through a live bind mount would delete host files.
func removeBuildDir(dir string) {
	mounts := mountsUnder(dir)
	for i := len(mounts) - 1; i >= 0; i-- {
		_ = unix.Unmount(mounts[i], unix.MNT_DETACH)
	}
	if len(mountsUnder(dir)) > 0 {
		return // leave it rather than risk the host
	}
	_ = os.RemoveAll(dir)
}

// mountsUnder lists the mount points at or below dir, in mount order.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// aptMirror returns the Debian archive apt on this machine uses for suite
// (from /etc/apt/sources.list and sources.list.d), or "" for debootstrap's
// default. A local mirror or proxy is what this machine can reach.
func aptMirror(suite string) string {
	files := []string{"/etc/apt/sources.list"}
	more, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	files = append(files, more...)
	more, _ = filepath.Glob("/etc/apt/sources.list.d/*.sources")
	files = append(files, more...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var uri string
		if strings.HasSuffix(f, ".sources") {
			uri = mirrorFromDeb822(string(b), suite)
		} else {
			uri = mirrorFromList(string(b), suite)
		}
		if uri != "" {
			return uri
		}
	}
	return ""
}

func mirrorFromList(text, suite string) string {
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") { // [arch=amd64 signed-by=...]
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) > 0 {
				f = f[1:]
			}
		}
		if len(f) >= 2 && f[1] == suite && strings.HasPrefix(f[0], "http") {
			return f[0]
		}
	}
	return ""
}

func mirrorFromDeb822(text, suite string) string {
	for _, stanza := range strings.Split(text, "\n\n") {
		fields := map[string]string{}
		for _, line := range strings.Split(stanza, "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			k, v, ok := strings.Cut(line, ":")
			if ok {
				fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
			}
		}
		if fields["enabled"] == "no" || !slices.Contains(strings.Fields(fields["types"]), "deb") {
			continue
		}
		if !slices.Contains(strings.Fields(fields["suites"]), suite) {
			continue
		}
		for _, u := range strings.Fields(fields["uris"]) {
			if strings.HasPrefix(u, "http") {
				return u
			}
		}
	}
	return ""
}

// tarDir writes the tree at root to dst as a PAX tar with numeric owners,
// nanosecond mtimes, xattrs, devices and hard links, in lexical order.
func tarDir(ctx context.Context, root, dst string) error {
	f, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("imagegen: %w", err)
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(bw)
	type inode struct{ dev, ino uint64 }
	seen := map[inode]string{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSocket != 0 {
			return nil
		}
		var link string
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		// Owner names would come from this host's passwd, and atime and
		// ctime change on every read; keep the tar reproducible.
		hdr.Uname, hdr.Gname = "", ""
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		hdr.Format = tar.FormatPAX
		if x, err := listXattrs(p); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		} else if len(x) > 0 {
			hdr.PAXRecords = map[string]string{}
			for k, v := range x {
				hdr.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if fi.Mode().IsRegular() && st.Nlink > 1 {
			id := inode{uint64(st.Dev), st.Ino}
			if first, ok := seen[id]; ok {
				hdr.Typeflag = tar.TypeLink
				hdr.Linkname = first
				hdr.Size = 0
			} else {
				seen[id] = hdr.Name
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, src)
			src.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("imagegen: tar %s: %w", root, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("imagegen: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("imagegen: %w", err)
	}
	return f.Close()
}

// listXattrs returns every extended attribute of p (not following a
// symlink).
func listXattrs(p string) (map[string]string, error) {
	size, err := unix.Llistxattr(p, nil)
	if err != nil || size == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, err
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		n, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, err
		}
		val := make([]byte, n)
		n, err = unix.Lgetxattr(p, name, val)
		if err != nil {
			return nil, err
		}
		out[name] = string(val[:n])
	}
	return out, nil
}

// aptCache reports whether name is one of apt's package lists or caches,
// which official Debian images leave out (they are most of the non-usr/
// bytes and go stale at once).
func aptCache(name string) bool {
	if rest, ok := strings.CutPrefix(name, "var/lib/apt/lists/"); ok {
		return rest != "" && rest != "partial/" && rest != "lock"
	}
	return strings.HasPrefix(name, "var/cache/apt/") && (strings.HasSuffix(name, ".bin") || strings.HasSuffix(name, ".deb"))
}

// debianImageFromTar splits the cached rootfs tarball into three layers.
func debianImageFromTar(tarPath string, opts DebianOptions) (v1.Image, error) {
	// First pass: names, to place hard links and pick the file to delete.
	f, err := os.Open(tarPath)
	if err != nil {
		return nil, fmt.Errorf("imagegen: %w", err)
	}
	defer f.Close()
	inUsr := func(name string) bool { return name == "usr/" || strings.HasPrefix(name, "usr/") }
	var etcHdr *tar.Header
	names := map[string]byte{}
	tr := tar.NewReader(bufio.NewReader(f))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("imagegen: read %s: %w", tarPath, err)
		}
		names[hdr.Name] = hdr.Typeflag
		if hdr.Name == "etc/" {
			etcHdr = hdr
		}
	}
	if etcHdr == nil {
		return nil, fmt.Errorf("imagegen: %s has no etc/ directory", tarPath)
	}
	victim := ""
	for _, n := range []string{"etc/issue.net", "etc/motd", "etc/issue", "etc/debian_version"} {
		if t, ok := names[n]; ok && t == tar.TypeReg {
			victim = n
			break
		}
	}
	if victim == "" {
		return nil, fmt.Errorf("imagegen: %s has none of the etc/ files the whiteout layer deletes", tarPath)
	}

	layerOf := func(hdr *tar.Header) int {
		if aptCache(hdr.Name) {
			return -1
		}
		if inUsr(hdr.Name) && (hdr.Typeflag != tar.TypeLink || inUsr(hdr.Linkname)) {
			return 0
		}
		return 1
	}
	copyLayer := func(want int) func(io.Writer) error {
		return func(w io.Writer) error {
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return err
			}
			tr := tar.NewReader(bufio.NewReaderSize(f, 1<<20))
			tw := tar.NewWriter(w)
			for {
				hdr, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					return err
				}
				if layerOf(hdr) != want {
					continue
				}
				if err := tw.WriteHeader(hdr); err != nil {
					return fmt.Errorf("%s: %w", hdr.Name, err)
				}
				if _, err := io.Copy(tw, tr); err != nil {
					return fmt.Errorf("%s: %w", hdr.Name, err)
				}
			}
			return tw.Close()
		}
	}
	whiteout := func(w io.Writer) error {
		tw := tar.NewWriter(w)
		if err := tw.WriteHeader(etcHdr); err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeReg,
			Name:     "etc/" + WhiteoutPrefix + strings.TrimPrefix(victim, "etc/"),
			ModTime:  etcHdr.ModTime,
			Format:   tar.FormatPAX,
		}); err != nil {
			return err
		}
		return tw.Close()
	}

	mt, _ := layerMediaType(opts.Format, Gzip)
	manifestMT, configMT := types.OCIManifestSchema1, types.OCIConfigJSON
	if opts.Format == Docker {
		manifestMT, configMT = types.DockerManifestSchema2, types.DockerConfigJSON
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, manifestMT), configMT)
	steps := []struct {
		write   func(io.Writer) error
		comment string
	}{
		{copyLayer(0), "debootstrap " + opts.Suite + ": usr/"},
		{copyLayer(1), "debootstrap " + opts.Suite + ": everything but usr/"},
		{whiteout, "rm /" + victim},
	}
	var adds []mutate.Addendum
	for i, s := range steps {
		bl, err := newBlobLayer(Layer{Compression: Gzip}, mt, s.write)
		if err != nil {
			return nil, fmt.Errorf("imagegen: debian layer %d: %w", i, err)
		}
		adds = append(adds, mutate.Addendum{
			Layer:     bl,
			MediaType: mt,
			History:   v1.History{Created: v1.Time{Time: DefaultTime}, CreatedBy: s.comment},
		})
	}
	img, err = mutate.Append(img, adds...)
	if err != nil {
		return nil, fmt.Errorf("imagegen: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("imagegen: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: DefaultTime}
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config = v1.Config{
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Cmd: []string{"/bin/bash"},
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("imagegen: %w", err)
	}
	return img, nil
}
