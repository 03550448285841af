package registry

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

// TestClientErrorsAreNotErrors: distribution's "response completed with
// error" for a 404 (every push's existence checks) logs at debug, a 5xx
// still at error. The entries have the shape distribution logs (fields
// copied from a real push).
func TestClientErrorsAreNotErrors(t *testing.T) {
	var buf bytes.Buffer
	h := &slogHook{l: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	entry := func(status int, code string) *logrus.Entry {
		return &logrus.Entry{Level: logrus.ErrorLevel, Message: "response completed with error", Data: logrus.Fields{
			"http.request.method": "HEAD", "http.response.status": status, "err.code": code, "vars.name": "p/r/i",
		}}
	}
	for _, e := range []*logrus.Entry{entry(404, "BLOB_UNKNOWN"), entry(404, "MANIFEST_UNKNOWN"), entry(401, "UNAUTHORIZED")} {
		buf.Reset()
		h.Fire(e)
		if !strings.Contains(buf.String(), "level=DEBUG") {
			t.Errorf("%v %v logged as %q, want DEBUG", e.Data["http.response.status"], e.Data["err.code"], buf.String())
		}
	}
	buf.Reset()
	h.Fire(entry(500, "UNKNOWN"))
	if !strings.Contains(buf.String(), "level=ERROR") {
		t.Errorf("500 logged as %q, want ERROR", buf.String())
	}
}
