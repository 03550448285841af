package server_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	batch "cloud.google.com/go/batch/apiv1"
	"cloud.google.com/go/batch/apiv1/batchpb"
	"google.golang.org/api/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/riffle-dev/riffle/internal/auth"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/server"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// createToken makes a token through the token API with the admin token.
func createToken(t *testing.T, addr, admin, name string, bs ...auth.Binding) string {
	t.Helper()
	f := &authFixture{ctx: context.Background(), addr: addr, admin: admin}
	var out struct {
		Secret string `json:"secret"`
	}
	f.adminCall(t, "POST", "/riffle/v1/auth/tokens", map[string]any{"name": name, "bindings": bs}, &out)
	return out.Secret
}

// TestSkopeoPushNeedsToken: skopeo logs in with a token as the password,
// as with Artifact Registry; an editor pushes, a viewer and no login are
// refused.
func TestSkopeoPushNeedsToken(t *testing.T) {
	skopeo := testutil.RequiresBinary(t, "skopeo")
	ctx, srv, addr := startServer(t, "")
	admin := adminToken(t, srv)
	editor := createToken(t, addr, admin, "ed", auth.Binding{Project: "p", Role: auth.RoleEditor})
	viewer := createToken(t, addr, admin, "vi", auth.Binding{Project: "p", Role: auth.RoleViewer})
	spec, _ := imagegen.Busybox("/bin/busybox")
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	if err := imagegen.WriteOCILayout(dir, img, "v1"); err != nil {
		t.Fatal(err)
	}
	push := func(creds string) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		args := []string{"copy", "--dest-tls-verify=false"}
		if creds != "" {
			args = append(args, "--dest-creds", creds)
		}
		cmd := exec.CommandContext(ctx, skopeo, append(args, "oci:"+dir+":v1", "docker://"+addr+"/p/r/skopeo:v1")...)
		cmd.Env = append(cmd.Environ(), "HOME="+t.TempDir()) // no user auth files
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := push(""); err == nil || !strings.Contains(strings.ToLower(out), "unauthorized") {
		t.Fatalf("push without login: %v\n%s", err, out)
	}
	if out, err := push("oauth2accesstoken:" + viewer); err == nil || !strings.Contains(out, "denied") {
		t.Fatalf("push as viewer: %v\n%s", err, out)
	}
	if out, err := push("oauth2accesstoken:" + editor); err != nil {
		t.Fatalf("push as editor: %v\n%s", err, out)
	}
	if _, err := registryClient(viewer).Resolve(ctx, addr+"/p/r/skopeo:v1", nil); err != nil {
		t.Fatalf("viewer cannot pull what the editor pushed: %v", err)
	}
}

// TestSubmitRefusesHostPowers: what would give a submitter the host, or
// reach into private networks, is refused at submit, naming the field and
// the config key to change.
func TestSubmitRefusesHostPowers(t *testing.T) {
	allowed := t.TempDir()
	ctx, srv, addr := startServerWith(t, server.Config{HostPaths: []string{allowed}})
	admin := adminToken(t, srv)
	editor := createToken(t, addr, admin, "ed", auth.Binding{Project: "p", Role: auth.RoleEditor})
	c, err := batch.NewRESTClient(ctx, option.WithEndpoint("http://"+addr), withToken(editor))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	spec, _ := imagegen.Busybox("/bin/busybox")
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	good := addr + "/p/r/busybox:v1"
	if err := registryClient(admin).Push(ctx, good, img, nil); err != nil {
		t.Fatal(err)
	}
	if err := registryClient(admin).Push(ctx, addr+"/secret/r/busybox:v1", img, nil); err != nil {
		t.Fatal(err)
	}
	// A service on loopback that answers with something other than HTTP:
	// its bytes must not come back in the error.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Write([]byte("SSH-2.0-OpenSSH_9.2 SECRET-BANNER\r\n"))
			conn.Close()
		}
	}()

	ctr := func(uri string, volumes []string, options string) *batchpb.Job {
		return &batchpb.Job{TaskGroups: []*batchpb.TaskGroup{{TaskSpec: &batchpb.TaskSpec{Runnables: []*batchpb.Runnable{{
			Executable: &batchpb.Runnable_Container_{Container: &batchpb.Runnable_Container{ImageUri: uri, Volumes: volumes, Options: options, Commands: []string{"true"}}}}}}}}}
	}
	withTaskVolume := ctr(good, nil, "")
	withTaskVolume.TaskGroups[0].TaskSpec.Volumes = []*batchpb.Volume{{MountPath: "/etc/riffle-test", Source: &batchpb.Volume_Nfs{Nfs: &batchpb.NFS{Server: "192.0.2.1", RemotePath: "/x"}}}}
	withLogsPath := ctr(good, nil, "")
	withLogsPath.LogsPolicy = &batchpb.LogsPolicy{Destination: batchpb.LogsPolicy_PATH, LogsPath: "/etc/riffle-test.log"}

	for _, tc := range []struct {
		id   string
		job  *batchpb.Job
		code codes.Code
		want []string
	}{
		{"root-volume", ctr(good, []string{"/:/host"}, ""), codes.InvalidArgument, []string{"runnables[0].container.volumes[0]", "hostPaths"}},
		{"options-volume", ctr(good, nil, "-v /etc:/x"), codes.InvalidArgument, []string{"runnables[0].container.options", "hostPaths"}},
		{"privileged", ctr(good, nil, "--privileged"), codes.InvalidArgument, []string{"runnables[0].container.options", "--privileged", "admin"}},
		{"task-volume", withTaskVolume, codes.InvalidArgument, []string{"taskSpec.volumes[0].mountPath", "hostPaths"}},
		{"logs-path", withLogsPath, codes.InvalidArgument, []string{"logsPolicy.logsPath", "hostPaths"}},
		{"private-registry", ctr("10.1.2.3:5000/p/r/x:v1", nil, ""), codes.InvalidArgument, []string{"runnables[0].container.imageUri", "10.1.2.3", "outbound.allowRegistries"}},
		{"metadata-server", ctr("169.254.169.254/p/r/x:v1", nil, ""), codes.InvalidArgument, []string{"runnables[0].container.imageUri", "169.254.169.254", "outbound.allowRegistries"}},
		{"other-project-image", ctr(addr+"/secret/r/busybox:v1", nil, ""), codes.PermissionDenied, []string{"runnables[0].container.imageUri", "viewer", "secret"}},
		{"not-http", ctr(ln.Addr().String()+"/p/r/x:v1", nil, ""), codes.InvalidArgument, []string{"runnables[0].container.imageUri"}},
	} {
		_, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: "projects/p/locations/us-central1", JobId: tc.id, Job: tc.job})
		if status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %v", tc.id, err, tc.code)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v\ndoes not mention %q", tc.id, err, w)
			}
		}
		if strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "SSH-2.0") {
			t.Errorf("%s: the error echoes the reply of the service: %v", tc.id, err)
		}
	}
	// Under hostPaths, volumes are accepted.
	os.MkdirAll(filepath.Join(allowed, "data"), 0o755)
	if _, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: "projects/p/locations/us-central1", JobId: "allowed-volume",
		Job: ctr(good, []string{filepath.Join(allowed, "data") + ":/data:ro"}, "")}); err != nil {
		t.Fatalf("volume under hostPaths: %v", err)
	}
}
