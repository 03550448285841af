package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestProcessArgs(t *testing.T) {
	img := ocispec.ImageConfig{Entrypoint: []string{"/ep", "-x"}, Cmd: []string{"cmd1", "cmd2"}}
	for _, tc := range []struct {
		name       string
		img        ocispec.ImageConfig
		entrypoint string
		commands   []string
		want       []string
	}{
		{"image only", img, "", nil, []string{"/ep", "-x", "cmd1", "cmd2"}},
		{"commands replace CMD", img, "", []string{"a", "b"}, []string{"/ep", "-x", "a", "b"}},
		{"entrypoint replaces ENTRYPOINT and clears CMD", img, "/other", nil, []string{"/other"}},
		{"entrypoint and commands", img, "/other", []string{"a"}, []string{"/other", "a"}},
		{"no entrypoint in image", ocispec.ImageConfig{Cmd: []string{"c"}}, "", []string{"/bin/x", "y"}, []string{"/bin/x", "y"}},
	} {
		got, err := processArgs(tc.img, tc.entrypoint, tc.commands)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	if _, err := processArgs(ocispec.ImageConfig{}, "", nil); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("empty command: err = %v, want ErrInvalidSpec", err)
	}
}

func TestMergeEnv(t *testing.T) {
	got := mergeEnv([]string{"A=1", "B=2"}, []string{"B=3", "C=4"}, []string{"A=5"})
	want := []string{"A=5", "B=3", "C=4"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestParseVolume(t *testing.T) {
	good := map[string]Volume{
		"/a:/b":            {Source: "/a", Destination: "/b"},
		"/a/:/b/c/:ro":     {Source: "/a", Destination: "/b/c", ReadOnly: true},
		"/a:/b:rw":         {Source: "/a", Destination: "/b"},
		"/a:/b:ro,rshared": {Source: "/a", Destination: "/b", ReadOnly: true, Propagation: "rshared"},
	}
	for s, want := range good {
		got, err := ParseVolume(s)
		if err != nil || got != want {
			t.Errorf("ParseVolume(%q) = %+v, %v; want %+v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "/a", "named:/b", "/a:b", "/a:/b:rx", "/a:/b:ro:x", "/a:/", "/a:/b:ro,rw"} {
		_, err := ParseVolume(s)
		if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), `"`+s+`"`) {
			t.Errorf("ParseVolume(%q) error = %v; want ErrInvalidSpec naming the string", s, err)
		}
	}
}

func TestSplitShell(t *testing.T) {
	got, err := splitShell(`-e 'A=b c' --env="X=\"y\"" -v /a:/b  z\ w`)
	want := []string{"-e", "A=b c", `--env=X="y"`, "-v", "/a:/b", "z w"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, %v; want %q", got, err, want)
	}
	if _, err := splitShell(`-e 'open`); err == nil {
		t.Fatal("unterminated quote accepted")
	}
}

func TestParseOptions(t *testing.T) {
	t.Setenv("RIFFLE_TEST_HOSTVAR", "fromhost")
	o, err := ParseOptions(`--rm -e A=1 --env B=2 -eC=3 -e RIFFLE_TEST_HOSTVAR -e RIFFLE_TEST_UNSET -w /work --user=1000:1000 ` +
		`-v /h:/c:ro --volume=/h2:/c2 --read-only --network none --privileged --shm-size 128m ` +
		`--ulimit nofile=1024:2048 --cap-add SYS_ADMIN --cap-drop=NET_RAW -h box --label k=v ` +
		`--cpus 1.5 -m 1g --pids-limit 100 --stop-timeout 3 --add-host db:10.0.0.2 --tmpfs /scratch --security-opt no-new-privileges`)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"A=1", "B=2", "C=3", "RIFFLE_TEST_HOSTVAR=fromhost"}; !reflect.DeepEqual(o.Env, want) {
		t.Errorf("Env = %q, want %q", o.Env, want)
	}
	if o.Workdir != "/work" || o.User != "1000:1000" || !o.ReadOnly || o.Network != "none" || !o.Privileged ||
		o.ShmSize != 128<<20 || o.Hostname != "box" || o.Labels["k"] != "v" || o.CPUMilli != 1500 ||
		o.Memory != 1<<30 || o.PidsLimit != 100 || o.StopGrace.Seconds() != 3 || !o.NoNewPriv {
		t.Errorf("parsed %+v", o)
	}
	if len(o.Volumes) != 2 || len(o.Ulimits) != 1 || o.Ulimits[0].Soft != 1024 || o.Ulimits[0].Hard != 2048 ||
		len(o.CapAdd) != 1 || len(o.CapDrop) != 1 || len(o.AddHosts) != 1 || len(o.Tmpfs) != 1 {
		t.Errorf("parsed %+v", o)
	}

	// Harmless docker flags, alone and combined, as Batch's samples write
	// them; -d only records that the runnable asked to be detached.
	for opts, detach := range map[string]bool{"-t": false, "--tty": false, "-it": false, "-ti --rm": false, "-td --network host": true, "-d=true": true, "--detach": true} {
		o, err := ParseOptions(opts)
		if err != nil || o.Detach != detach {
			t.Errorf("ParseOptions(%q) = %+v, %v; want accepted with Detach %v", opts, o, err, detach)
		}
	}

	for opts, flag := range map[string]string{
		"--gpus all":           "--gpus",
		"-p 80:80":             "-p",
		"--init":               "--init",
		"-ix":                  "-ix",
		"-ti5":                 "-ti5",
		"--network=mynet":      "--network",
		"--memory":             "--memory",
		"--ulimit bogus=1":     "--ulimit",
		"--log-driver=syslog":  "--log-driver",
		"ubuntu":               "ubuntu",
		"--shm-size lots":      "--shm-size",
		"--security-opt foo=1": "--security-opt",
	} {
		_, err := ParseOptions(opts)
		if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), flag) {
			t.Errorf("ParseOptions(%q) error = %v; want one naming %s", opts, err, flag)
		}
	}
}

func TestResolveUser(t *testing.T) {
	root := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1001::/home/alice:/bin/sh\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nalice:x:1001:\nstaff:x:50:alice,bob\n"), 0o644))
	for spec, want := range map[string]execUser{
		"":            {UID: 0, GID: 0, Home: "/root"},
		"alice":       {UID: 1000, GID: 1001, AdditionalGids: []uint32{50}, Home: "/home/alice"},
		"1000":        {UID: 1000, GID: 1001, AdditionalGids: []uint32{50}, Home: "/home/alice"},
		"alice:staff": {UID: 1000, GID: 50, Home: "/home/alice"},
		"4242:4343":   {UID: 4242, GID: 4343, Home: "/"},
		"4242":        {UID: 4242, GID: 0, Home: "/"},
		"alice:7":     {UID: 1000, GID: 7, Home: "/home/alice"},
	} {
		got, err := resolveUser(root, spec)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("resolveUser(%q) = %+v, %v; want %+v", spec, got, err, want)
		}
	}
	for _, spec := range []string{"nobody", "alice:nogroup"} {
		if _, err := resolveUser(root, spec); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("resolveUser(%q) error = %v, want ErrInvalidSpec", spec, err)
		}
	}
	// A symlinked /etc/passwd must resolve inside the root, not on the host.
	must(t, os.Remove(filepath.Join(root, "etc/passwd")))
	must(t, os.Symlink("/../../../../etc/shadow-not-here", filepath.Join(root, "etc/passwd")))
	if got, err := resolveUser(root, "1000"); err != nil || got.Home != "/" {
		t.Errorf("symlinked passwd: %+v, %v", got, err)
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/a\040b\011c\134d`); got != "/a b\tc\\d" {
		t.Fatalf("got %q", got)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
