package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/riffle-dev/riffle/internal/remote"
)

func init() { subcommands = append(subcommands, newImageCmd) }

// imageFlags are shared by the image subcommands.
type imageFlags struct {
	server   string
	dataDir  string
	insecure []string
	// local is the server address localServer chose, for error hints.
	local string
	// hostless is the reference without a registry host the command was
	// given, for error hints.
	hostless string
}

func (f *imageFlags) client() *remote.Client {
	kc := serverKeychain{addr: resolveServer(f.server, f.dataDir), token: clientToken(f.dataDir)}
	return remote.New(remote.Options{Insecure: f.insecure, UserAgent: "riffle/" + version, Keychain: kc, Transport: registryTransport(f.dataDir)})
}

// localServer is the address of the `riffle serve` the CLI talks to by
// default, found as every client command finds it (resolveServer).
func (f *imageFlags) localServer() (string, error) {
	f.local = resolveServer(f.server, f.dataDir)
	return f.local, nil
}

// hint explains an unreachable local server (the likely cause is that
// `riffle serve` is not running, or runs elsewhere), and a failure on a
// reference without a registry host, which means Docker Hub.
func (f *imageFlags) hint(err error) error {
	if err == nil {
		return nil
	}
	if f.hostless != "" {
		local := resolveServer(f.server, f.dataDir)
		return fmt.Errorf("%w\n%q names no registry host, so it means Docker Hub (docker.io), as for docker, riffle pull, riffle mount and a job's imageUri; for this machine's riffle serve write %s/%s", err, f.hostless, local, f.hostless)
	}
	var op *net.OpError
	if f.local == "" || !errors.As(err, &op) {
		return err
	}
	return fmt.Errorf("%w\ncannot reach riffle serve at %s: start `riffle serve`, or point the CLI at a server with --server HOST:PORT or RIFFLE_SERVER", err, f.local)
}

// qualify returns ref as every Riffle command reads it (see hasHost): a
// reference without a registry host means Docker Hub. It remembers such a
// reference so that hint can say how to name the local server instead.
func (f *imageFlags) qualify(ref string) (string, error) {
	if !hasHost(ref) {
		f.hostless = ref
	}
	return ref, nil
}

// hasHost reports whether a reference or repository starts with a
// registry host, by the rule docker and go-containerregistry apply: a
// first component with a '.' or ':', or "localhost".
func hasHost(ref string) bool {
	first, _, found := strings.Cut(ref, "/")
	return found && (strings.ContainsAny(first, ".:") || first == "localhost")
}

func newImageCmd() *cobra.Command {
	f := &imageFlags{}
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Push, list and inspect images in a registry (by default this machine's riffle serve)",
		Long: `image works with OCI registries: the one embedded in riffle serve, or any other.

References have the Artifact Registry shape HOST:PORT/PROJECT/REPOSITORY/IMAGE:TAG,
e.g. 127.0.0.1:8080/my-project/my-repo/app:v1 for a local riffle serve.
A reference without a registry host means Docker Hub (busybox is
docker.io/library/busybox), in every Riffle command and a job's imageUri,
as in docker and Google Batch. Only "image ls" without an argument lists the
local riffle serve (found through its data directory or --server).

Credentials come from the docker config.json (DOCKER_CONFIG or ~/.docker) and
its credential helpers, as written by docker login. Plain HTTP is used only
for loopback hosts and hosts given with --insecure-registry.`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.server, "server", "", "riffle serve HOST:PORT that \"image ls\" lists without an argument (default: the running riffle serve)")
	pf.StringVar(&f.dataDir, "data-dir", "", "data directory of the riffle serve to use (default $XDG_STATE_HOME/riffle or ~/.local/state/riffle)")
	pf.StringSliceVar(&f.insecure, "insecure-registry", nil, "registry host[:port] that may be reached over plain HTTP (loopback always may); repeatable")
	// --insecure was this flag's first name; the config key and the other
	// commands say insecure-registry.
	pf.StringSliceVar(&f.insecure, "insecure", nil, "")
	_ = pf.MarkDeprecated("insecure", "use --insecure-registry")
	cmd.AddCommand(newImagePushCmd(f), newImageLsCmd(f), newImageInspectCmd(f), newImageRmCmd(f))
	return cmd
}

func newImagePushCmd(f *imageFlags) *cobra.Command {
	var refName string
	cmd := &cobra.Command{
		Use:   "push SRC DEST",
		Short: "Push an OCI layout directory or a docker save tarball to a registry",
		Long: `push uploads an image to DEST (HOST:PORT/PROJECT/REPOSITORY/IMAGE:TAG; without a
registry host, DEST is on Docker Hub).

SRC is one of:
  DIR         an OCI image layout holding one image (or one index)
  DIR:NAME    the image named NAME (org.opencontainers.image.ref.name) in the layout
  FILE        a docker save tarball holding one image
Use --ref NAME to choose an image in a layout or a tag in a tarball holding several.
A layout entry that is an index is pushed with all its platforms.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			defer func() { err = f.hint(err) }()
			src, err := openSource(args[0], refName)
			if err != nil {
				return err
			}
			dest, err := f.qualify(args[1])
			if err != nil {
				return err
			}
			c := f.client()
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			var progress chan v1.Update
			done := make(chan struct{})
			if isTerminal(out) {
				progress = make(chan v1.Update, 16)
				go func() {
					defer close(done)
					showProgress(cmd.ErrOrStderr(), "pushing "+dest, progress)
				}()
			} else {
				close(done)
			}
			if src.index != nil {
				err = c.PushIndex(ctx, dest, src.index, progress)
			} else {
				err = c.Push(ctx, dest, src.image, progress)
			}
			<-done
			if err != nil {
				return err
			}
			d, err := src.digest()
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "pushed %s@%s\n", dest, d)
			return nil
		},
	}
	cmd.Flags().StringVar(&refName, "ref", "", "name of the image to push from a layout (ref.name annotation) or tag from a tarball")
	return cmd
}

// source is what `image push` reads: one image or one index.
type source struct {
	image v1.Image
	index v1.ImageIndex
}

func (s source) digest() (v1.Hash, error) {
	if s.index != nil {
		return s.index.Digest()
	}
	return s.image.Digest()
}

// openSource opens SRC as an OCI layout (DIR or DIR:NAME) or a docker save
// tarball.
func openSource(arg, refName string) (source, error) {
	path := arg
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		// DIR:NAME, as skopeo's oci: transport spells it.
		if i := strings.LastIndexByte(arg, ':'); i > 0 {
			if st, err := os.Stat(arg[:i]); err == nil && st.IsDir() {
				if refName != "" && refName != arg[i+1:] {
					return source{}, fmt.Errorf("image push: SRC names %q and --ref names %q; give one", arg[i+1:], refName)
				}
				path, refName = arg[:i], arg[i+1:]
			}
		}
	}
	st, err := os.Stat(path)
	if err != nil {
		return source{}, fmt.Errorf("image push: SRC %s: %w (give an OCI layout directory, DIR:NAME, or a docker save tarball)", arg, err)
	}
	if st.IsDir() {
		return openLayout(path, refName)
	}
	var tag *name.Tag
	if refName != "" {
		t, err := name.NewTag(refName)
		if err != nil {
			return source{}, fmt.Errorf("image push: --ref %q is not a tag of the tarball: %w", refName, err)
		}
		tag = &t
	}
	img, err := tarball.ImageFromPath(path, tag)
	if err != nil {
		return source{}, fmt.Errorf("image push: SRC %s is neither an OCI layout directory nor a docker save tarball: %w", path, err)
	}
	// Reading the manifest now turns a broken tarball into an error here
	// rather than midway through the push.
	if _, err := img.Manifest(); err != nil {
		return source{}, fmt.Errorf("image push: SRC %s: %w (a tarball with several images needs --ref TAG)", path, err)
	}
	return source{image: img}, nil
}

func openLayout(dir, refName string) (source, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return source{}, fmt.Errorf("image push: %s is not an OCI image layout (no readable index.json): %w", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return source{}, fmt.Errorf("image push: %s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return source{}, fmt.Errorf("image push: %s: %w", dir, err)
	}
	var pick []v1.Descriptor
	var names []string
	for _, d := range im.Manifests {
		n := d.Annotations[ocispec.AnnotationRefName]
		if n != "" {
			names = append(names, n)
		}
		if refName == "" || n == refName {
			pick = append(pick, d)
		}
	}
	switch {
	case len(pick) == 0 && refName != "":
		return source{}, fmt.Errorf("image push: %s has no image named %q; names in it: %s", dir, refName, strings.Join(names, ", "))
	case len(pick) == 0:
		return source{}, fmt.Errorf("image push: the OCI layout %s holds no image", dir)
	case len(pick) > 1:
		return source{}, fmt.Errorf("image push: the OCI layout %s holds %d images; choose one with DIR:NAME or --ref NAME (names: %s)", dir, len(pick), strings.Join(names, ", "))
	}
	d := pick[0]
	if d.MediaType.IsIndex() {
		ii, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return source{}, fmt.Errorf("image push: %s: %w", dir, err)
		}
		return source{index: ii}, nil
	}
	img, err := idx.Image(d.Digest)
	if err != nil {
		return source{}, fmt.Errorf("image push: %s: %w", dir, err)
	}
	return source{image: img}, nil
}

func newImageLsCmd(f *imageFlags) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "ls [HOST[:PORT]][/PROJECT[/...]]",
		Short: "List the images (repositories and tags) of a registry",
		Long: `ls lists the repositories of a registry and their tags, one HOST/REPOSITORY:TAG
per line. The argument, HOST[:PORT] followed by an optional project or path
prefix, narrows the list; without an argument it lists the whole registry of
the local riffle serve.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			defer func() { err = f.hint(err) }()
			arg := ""
			if len(args) == 1 {
				arg = strings.TrimSuffix(args[0], "/")
			}
			host, prefix, err := splitHostPrefix(f, arg)
			if err != nil {
				return err
			}
			c := f.client()
			ctx := cmd.Context()
			repos, err := c.Catalog(ctx, host, prefix)
			if err != nil {
				return err
			}
			type entry struct {
				Repository string   `json:"repository"`
				Tags       []string `json:"tags"`
			}
			entries := make([]entry, 0, len(repos))
			for _, r := range repos {
				tags, err := c.Tags(ctx, host+"/"+r)
				if errors.Is(err, remote.ErrNotFound) {
					continue // deleted since the catalog was read
				}
				if err != nil {
					return err
				}
				entries = append(entries, entry{Repository: host + "/" + r, Tags: tags})
			}
			out := cmd.OutOrStdout()
			switch format {
			case "json":
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(entries)
			case "", "text":
				for _, e := range entries {
					if len(e.Tags) == 0 {
						fmt.Fprintf(out, "%s (no tags)\n", e.Repository)
					}
					for _, t := range e.Tags {
						fmt.Fprintf(out, "%s:%s\n", e.Repository, t)
					}
				}
				return nil
			}
			return fmt.Errorf("image ls: --format %q: use text or json", format)
		},
	}
	cmd.Flags().StringVar(&format, "format", "text", "output format: text or json")
	return cmd
}

// splitHostPrefix splits ls's argument into a registry host and a
// repository prefix; no argument means the local server. An argument
// without a host would mean Docker Hub, which lists nothing.
func splitHostPrefix(f *imageFlags, arg string) (host, prefix string, err error) {
	if arg == "" {
		host, err = f.localServer()
		return host, "", err
	}
	first, rest, _ := strings.Cut(arg, "/")
	if strings.ContainsAny(first, ".:") || first == "localhost" {
		return first, rest, nil
	}
	local := resolveServer(f.server, f.dataDir)
	return "", "", fmt.Errorf("image ls: %q names no registry host (without one it would mean Docker Hub, which cannot be listed); for this machine's riffle serve write %s/%s", arg, local, arg)
}

func newImageInspectCmd(f *imageFlags) *cobra.Command {
	var format, platform string
	cmd := &cobra.Command{
		Use:   "inspect REF",
		Short: "Show an image's digest, platform, layers and config",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			defer func() { err = f.hint(err) }()
			ref, err := f.qualify(args[0])
			if err != nil {
				return err
			}
			var plat *v1.Platform
			if platform != "" {
				p, err := v1.ParsePlatform(platform)
				if err != nil {
					return fmt.Errorf("image inspect: --platform %q: %w (use OS/ARCH[/VARIANT], e.g. linux/arm64)", platform, err)
				}
				plat = p
			}
			img, err := f.client().Resolve(cmd.Context(), ref, plat)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch format {
			case "json":
				return writeInspectJSON(out, img)
			case "", "text":
				writeInspectText(out, img)
				return nil
			}
			return fmt.Errorf("image inspect: --format %q: use text or json", format)
		},
	}
	cmd.Flags().StringVar(&format, "format", "text", "output format: text or json")
	cmd.Flags().StringVar(&platform, "platform", "", "platform to select from a multi-platform image, OS/ARCH[/VARIANT] (default linux/"+remote.DefaultPlatform().Architecture+")")
	return cmd
}

func writeInspectJSON(w io.Writer, img *remote.Image) error {
	v := struct {
		Reference   string           `json:"reference"`
		Digest      string           `json:"digest"`
		MediaType   string           `json:"mediaType"`
		IndexDigest string           `json:"indexDigest,omitempty"`
		Platform    ocispec.Platform `json:"platform"`
		Size        int64            `json:"size"`
		Manifest    json.RawMessage  `json:"manifest"`
		Config      json.RawMessage  `json:"config"`
	}{
		Reference:   img.Reference.String(),
		Digest:      img.Digest.String(),
		MediaType:   img.MediaType,
		IndexDigest: img.IndexDigest.String(),
		Platform:    img.Platform,
		Size:        imageSize(img),
		Manifest:    img.RawManifest,
		Config:      img.RawConfig,
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// imageSize is the bytes a pull transfers: manifest, config and layers.
func imageSize(img *remote.Image) int64 {
	n := int64(len(img.RawManifest)) + img.Manifest.Config.Size
	for _, l := range img.Manifest.Layers {
		n += l.Size
	}
	return n
}

func writeInspectText(w io.Writer, img *remote.Image) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("Reference", img.Reference.String())
	row("Digest", img.Digest.String())
	row("Media type", img.MediaType)
	row("Index", img.IndexDigest.String())
	row("Platform", remote.PlatformString(img.Platform))
	if img.Config.Created != nil {
		row("Created", img.Config.Created.UTC().Format(time.RFC3339))
	}
	row("Size", humanBytes(imageSize(img)))
	row("Config", img.Manifest.Config.Digest.String())
	cfg := img.Config.Config
	if len(cfg.Entrypoint) > 0 {
		row("Entrypoint", jsonString(cfg.Entrypoint))
	}
	if len(cfg.Cmd) > 0 {
		row("Cmd", jsonString(cfg.Cmd))
	}
	row("WorkingDir", cfg.WorkingDir)
	row("User", cfg.User)
	for i, e := range cfg.Env {
		k := "Env:"
		if i > 0 {
			k = ""
		}
		fmt.Fprintf(tw, "%s\t%s\n", k, e)
	}
	tw.Flush()

	fmt.Fprintf(w, "\nLayers (%d):\n", len(img.Manifest.Layers))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  #\tDIGEST\tMEDIA TYPE\tSIZE")
	for i, l := range img.Manifest.Layers {
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\n", i, l.Digest, l.MediaType, humanBytes(l.Size))
	}
	tw.Flush()
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB (%d bytes)", float64(n)/float64(div), "KMGTPE"[exp], n)
}

// isTerminal reports whether w is a terminal; progress is drawn only then.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// showProgress draws one self-updating line from updates until the channel
// is closed (the push closes it).
func showProgress(w io.Writer, what string, updates <-chan v1.Update) {
	var last time.Time
	var u v1.Update
	draw := func() {
		pct := 0.0
		if u.Total > 0 {
			pct = 100 * float64(u.Complete) / float64(u.Total)
		}
		fmt.Fprintf(w, "\r\033[K%s: %s / %s (%.0f%%)", what, shortBytes(u.Complete), shortBytes(u.Total), pct)
	}
	for up := range updates {
		if up.Error != nil {
			continue
		}
		u = up
		if time.Since(last) >= 100*time.Millisecond {
			draw()
			last = time.Now()
		}
	}
	if !last.IsZero() {
		draw()
		fmt.Fprintln(w)
	}
}

func shortBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
