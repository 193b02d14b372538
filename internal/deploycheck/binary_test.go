package deploycheck

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// ignoreRule is one line of .dockerignore.
type ignoreRule struct {
	re     *regexp.Regexp
	negate bool
}

// parseDockerignore reads .dockerignore the way Docker does: paths relative
// to the context root, * and ? within a path element, ** across elements,
// ! re-includes, the last matching line wins, and excluding a directory
// excludes what is in it.
func parseDockerignore(text string) ([]ignoreRule, error) {
	var rules []ignoreRule
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r := ignoreRule{}
		if rest, ok := strings.CutPrefix(line, "!"); ok {
			r.negate, line = true, strings.TrimSpace(rest)
		}
		line = strings.TrimPrefix(path.Clean("/"+line), "/")
		var re strings.Builder
		re.WriteString("^")
		for i, el := range strings.Split(line, "/") {
			if el == "**" {
				re.WriteString("(?:[^/]+/)*")
				continue
			}
			for _, c := range el {
				switch c {
				case '*':
					re.WriteString("[^/]*")
				case '?':
					re.WriteString("[^/]")
				default:
					re.WriteString(regexp.QuoteMeta(string(c)))
				}
			}
			if i < len(strings.Split(line, "/"))-1 {
				re.WriteString("/")
			}
		}
		re.WriteString("$")
		compiled, err := regexp.Compile(re.String())
		if err != nil {
			return nil, fmt.Errorf(".dockerignore %q: %w", line, err)
		}
		r.re = compiled
		rules = append(rules, r)
	}
	return rules, nil
}

// ignored says whether rel (slash-separated) stays out of the context.
func ignored(rules []ignoreRule, rel string) bool {
	out := false
	for _, r := range rules {
		for p := rel; p != "."; p = path.Dir(p) {
			if r.re.MatchString(p) {
				out = !r.negate
				break
			}
		}
	}
	return out
}

// dockerContext copies what `docker build .` would send as the build
// context, root less what .dockerignore excludes, into dir.
func dockerContext(t *testing.T, root, dir string) {
	t.Helper()
	rules, err := parseDockerignore(string(readRepoFile(t, root, ".dockerignore")))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		if ignored(rules, filepath.ToSlash(rel)) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		dst := filepath.Join(dir, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, data, 0o644)
		}
		return nil // sockets, symlinks: not part of the build
	})
	if err != nil {
		t.Fatalf("copy the build context: %v", err)
	}
}

// buildLikeDockerfile builds ./cmd/mailferry as `docker build` would: from
// the build context .dockerignore leaves, with the Dockerfile's own go build
// command and environment, VERSION=version. The binary lands in dir.
func buildLikeDockerfile(t *testing.T, root, version, dir string) string {
	t.Helper()
	stages, err := parseDockerfile(string(readRepoFile(t, root, "Dockerfile")))
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	var build dockerBuild
	found := false
	for _, s := range stages {
		for _, in := range s.instrs {
			if in.cmd != "RUN" {
				continue
			}
			b, ok, err := goBuild(in, version)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				build, found = b, true
			}
		}
	}
	if !found {
		t.Fatal("Dockerfile: no RUN with go build")
	}
	bin := filepath.Join(dir, "mailferry")
	args := slices.Clone(build.args)
	replaced := false
	for i, a := range args {
		if (a == "-o" || a == "--o") && i+1 < len(args) {
			args[i+1] = bin
			replaced = true
		} else if strings.HasPrefix(a, "-o=") {
			args[i] = "-o=" + bin
			replaced = true
		}
	}
	if !replaced {
		// No -o: go build names the binary after the package, in the
		// working directory; put it in dir instead.
		args = append([]string{args[0], "-o", bin}, args[1:]...)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the binary: %v", err)
	}
	context := filepath.Join(dir, "context")
	dockerContext(t, root, context)
	cmd := exec.Command(goTool, args...)
	cmd.Dir = context
	cmd.Env = append(os.Environ(), build.env...) // the Dockerfile's values win
	t.Logf("%s go %q", strings.Join(build.env, " "), args)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build with the Dockerfile's flags, in the build context .dockerignore leaves: %v\n%s", err, out)
	}
	return bin
}

// checkStatic reports why the ELF file at path would not run on a base
// image without a C library: a program interpreter or needed libraries.
func checkStatic(path string) []string {
	var ps problems
	f, err := elf.Open(path)
	if err != nil {
		return []string{fmt.Sprintf("%s is not an ELF executable: %v", path, err)}
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			ps.add("the binary has a PT_INTERP program header: it is dynamically linked and needs a loader the distroless static image does not have")
		}
	}
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		ps.add("the binary needs shared libraries %v", libs)
	}
	if f.Section(".symtab") != nil {
		ps.add("the binary has a symbol table: -ldflags -s did not apply")
	}
	return ps
}

// probeEnv is the environment for running the binary to check its command
// line: no MAILFERRY_ variable from the caller, and a log level config.Load
// refuses. A command line the binary accepts then fails on configuration,
// naming that variable; one it rejects fails before, saying why.
func probeEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MAILFERRY_") {
			env = append(env, kv)
		}
	}
	return append(env, "MAILFERRY_LOG_LEVEL=deploycheck-invalid")
}

// acceptsArgs runs bin with args and says whether it got past parsing
// them; detail is what it printed otherwise.
func acceptsArgs(bin string, args []string) (ok bool, detail string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = probeEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		return false, "did not exit within 30 s"
	}
	if err == nil || strings.Contains(stderr.String(), "MAILFERRY_LOG_LEVEL") {
		return true, ""
	}
	return false, fmt.Sprintf("%v: %s%s", err, stdout.String(), stderr.String())
}

// TestBinary builds the binary as the Dockerfile does and checks the
// result: statically linked and stripped, built with CGO_ENABLED=0 and
// -trimpath, stamped with the version, and accepting every command line
// docker-compose.yml and the Kubernetes base give it.
func TestBinary(t *testing.T) {
	root := repoRoot(t)
	dir := t.TempDir()
	bin := buildLikeDockerfile(t, root, "test", dir)

	t.Run("static", func(t *testing.T) {
		report(t, checkStatic(bin))
	})

	t.Run("buildinfo", func(t *testing.T) {
		info, err := buildinfo.ReadFile(bin)
		if err != nil {
			t.Fatalf("read build info: %v", err)
		}
		if info.Path != modulePath+"/cmd/mailferry" {
			t.Errorf("main package is %s; want %s/cmd/mailferry", info.Path, modulePath)
		}
		settings := map[string]string{}
		for _, s := range info.Settings {
			settings[s.Key] = s.Value
		}
		if settings["CGO_ENABLED"] != "0" {
			t.Errorf("built with CGO_ENABLED=%q; want 0", settings["CGO_ENABLED"])
		}
		if settings["-trimpath"] != "true" {
			t.Errorf("built without -trimpath (settings %v)", settings)
		}
		// With -trimpath the go command leaves -ldflags out of the build
		// info; the version subtest checks the stamp instead.
	})

	t.Run("trimpath", func(t *testing.T) {
		data, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{root, dir} {
			if bytes.Contains(data, []byte(d+string(filepath.Separator))) {
				t.Errorf("the binary contains the build directory %s: -trimpath did not apply", d)
			}
		}
	})

	t.Run("version", func(t *testing.T) {
		cmd := exec.Command(bin, "version")
		cmd.Env = probeEnv()
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("mailferry version: %v", err)
		}
		if !strings.HasPrefix(string(out), "mailferry test ") {
			t.Errorf("mailferry version printed %q; want it to start with \"mailferry test \" (VERSION=test)", out)
		}
	})

	t.Run("commands", func(t *testing.T) {
		defaultCmd := dockerfileCmd(t, root)
		invs := composeInvocations(loadCompose(t, root), defaultCmd)
		b, _ := loadKube(t, root)
		kinvs, err := kubeInvocations(b, defaultCmd)
		if err != nil {
			t.Fatal(err)
		}
		invs = append(invs, kinvs...)
		invs = append(invs, invocation{where: "Dockerfile CMD", args: defaultCmd})
		for _, r := range allRoles {
			invs = append(invs, invocation{where: "role " + r, args: []string{"serve", "--roles", r}})
		}
		if len(invs) < 8 {
			t.Fatalf("found only %d mailferry command lines in compose and the Kubernetes base", len(invs))
		}
		for _, inv := range invs {
			if ok, detail := acceptsArgs(bin, inv.args); !ok {
				t.Errorf("%s: mailferry %s is rejected by the binary: %s", inv.where, strings.Join(inv.args, " "), detail)
			}
		}
		// The probe itself must be able to say no.
		for _, bad := range [][]string{{"serve", "--roles", "api,mailman"}, {"migrat"}, {"serve", "--role", "api"}} {
			if ok, _ := acceptsArgs(bin, bad); ok {
				t.Errorf("mailferry %s was accepted; the command probe cannot tell good from bad", strings.Join(bad, " "))
			}
		}
	})
}
