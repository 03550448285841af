package job

import (
	"strings"
	"testing"
)

// TestValidateRefusesWhatCannotRun: what would pass the API and fail (or
// silently change) at run time is refused at submit, naming the field:
// NUL bytes in commands, entrypoint, environment and script text, invalid
// UTF-8 in labels, and container options the runtime cannot honour.
// Harmless docker flags (-t, -i, -d on a background runnable) pass.
func TestValidateRefusesWhatCannotRun(t *testing.T) {
	wrap := func(runnable string) string {
		return `{"taskGroups":[{"taskSpec":{"runnables":[` + runnable + `]}}]}`
	}
	const ctr = `"container":{"imageUri":"127.0.0.1:5000/p/r/i:v1"`
	for _, c := range []struct{ name, config, field, want string }{
		{"NUL in commands", wrap(`{` + ctr + `,"commands":["echo","a\u0000b"]}}`), "taskGroups[0].taskSpec.runnables[0].container.commands[1]", "NUL"},
		{"NUL in entrypoint", wrap(`{` + ctr + `,"entrypoint":"/bin/sh\u0000"}}`), "taskGroups[0].taskSpec.runnables[0].container.entrypoint", "NUL"},
		{"NUL in environment value", wrap(`{"script":{"text":"true"},"environment":{"variables":{"A":"x\u0000y"}}}`), `taskGroups[0].taskSpec.runnables[0].environment.variables["A"]`, "NUL"},
		{"NUL in environment name", wrap(`{"script":{"text":"true"},"environment":{"variables":{"A\u0000":"x"}}}`), `taskGroups[0].taskSpec.runnables[0].environment.variables[`, "key contains a NUL"},
		{"NUL in script text", wrap(`{"script":{"text":"echo a\u0000; echo b"}}`), "taskGroups[0].taskSpec.runnables[0].script.text", "NUL"},
		{"invalid UTF-8 in a label", `{"labels":{"env":"` + "\xff\xfe" + `"},` + wrap(`{"script":{"text":"true"}}`)[1:], "line 1, column 19", "not valid UTF-8"},
		{"invalid UTF-8 in a runnable label", wrap(`{"script":{"text":"true"},"labels":{"k":"` + "a\xc3" + `"}}`), "column", "not valid UTF-8"},
		{"unsupported option", wrap(`{` + ctr + `,"options":"--gpus all"}}`), "taskGroups[0].taskSpec.runnables[0].container.options", "--gpus"},
		{"bad option value", wrap(`{` + ctr + `,"options":"--network mynet"}}`), "taskGroups[0].taskSpec.runnables[0].container.options", "mynet"},
		{"detached foreground", wrap(`{` + ctr + `,"options":"-td --network host"}}`), "taskGroups[0].taskSpec.runnables[0].container.options", "background"},
	} {
		t.Run(c.name, func(t *testing.T) {
			j, err := Parse([]byte(c.config), Lenient)
			if err == nil {
				err = Validate(j)
			}
			if err == nil || !strings.Contains(err.Error(), c.field) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v; want it to name %s and say %q", err, c.field, c.want)
			}
		})
	}
	for _, config := range []string{
		wrap(`{` + ctr + `,"options":"-t"}}`),
		wrap(`{` + ctr + `,"options":"-it --rm"}}`),
		wrap(`{` + ctr + `,"options":"-td --network host"},"background":true}`),
		wrap(`{"script":{"text":"echo ünïcödé ✓"},"labels":{"k":"ß"}}`),
	} {
		j, err := Parse([]byte(config), Lenient)
		if err == nil {
			err = Validate(j)
		}
		if err != nil {
			t.Errorf("%s: %v; want it accepted", config, err)
		}
	}
}

// TestYAMLErrorNoWrongLine: an error found after the YAML is re-encoded
// does not carry a position in the re-encoded text ("line 1"), which would
// point at the wrong line of the user's file.
func TestYAMLErrorNoWrongLine(t *testing.T) {
	_, err := Parse([]byte("taskGroups:\n- taskSpec:\n    runnables:\n    - script:\n        text: hi\ncreateTime: yesterday\n"), Lenient)
	if err == nil || strings.Contains(err.Error(), "line 1") || !strings.Contains(err.Error(), `"yesterday"`) {
		t.Errorf("err = %v, want the bad value named without a line 1", err)
	}
}
