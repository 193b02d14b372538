package deploycheck

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// dockerInstr is one Dockerfile instruction, continuation lines joined.
type dockerInstr struct {
	line int    // where it starts
	cmd  string // upper case: FROM, RUN, …
	args string
}

// dockerStage is a FROM and the instructions under it.
type dockerStage struct {
	from   dockerInstr
	image  string
	name   string // AS name, or ""
	instrs []dockerInstr
}

// parseDockerfile splits a Dockerfile into stages. Comment lines, also
// inside continuations, are dropped, as Docker does.
func parseDockerfile(data string) ([]dockerStage, error) {
	var (
		instrs []dockerInstr
		cur    strings.Builder
		start  int
	)
	for i, raw := range strings.Split(data, "\n") {
		line := strings.TrimRight(raw, " \t\r")
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || trimmed == "" && cur.Len() == 0 {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if body, cont := strings.CutSuffix(line, "\\"); cont {
			cur.WriteString(body)
			cur.WriteByte(' ')
			continue
		}
		cur.WriteString(line)
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			continue
		}
		cmd, args, _ := strings.Cut(text, " ")
		instrs = append(instrs, dockerInstr{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)})
	}
	if cur.Len() > 0 {
		return nil, fmt.Errorf("line %d: continuation runs past the end of the file", start)
	}
	var stages []dockerStage
	for _, in := range instrs {
		if in.cmd == "FROM" {
			words := strings.Fields(in.args)
			var image, name string
			for _, w := range words {
				if strings.HasPrefix(w, "--") {
					continue // --platform=…
				}
				if image == "" {
					image = w
				}
			}
			if n := len(words); n >= 3 && strings.EqualFold(words[n-2], "AS") {
				name = words[n-1]
			}
			stages = append(stages, dockerStage{from: in, image: image, name: name})
			continue
		}
		if len(stages) == 0 {
			if in.cmd == "ARG" {
				continue // global ARG before the first FROM
			}
			return nil, fmt.Errorf("line %d: %s before the first FROM", in.line, in.cmd)
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
	}
	if len(stages) == 0 {
		return nil, fmt.Errorf("no FROM")
	}
	return stages, nil
}

// checkImageRef says what is wrong with an image reference, or "" when it
// is pinned: it has a tag other than latest, or a digest.
func checkImageRef(ref string) string {
	if ref == "" {
		return "no image"
	}
	if strings.ContainsAny(ref, "${}") {
		return fmt.Sprintf("image %q is built from variables; write the tag out", ref)
	}
	if _, digest, ok := strings.Cut(ref, "@"); ok {
		if !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(digest) {
			return fmt.Sprintf("image %q has a malformed digest", ref)
		}
		return ""
	}
	last := ref[strings.LastIndex(ref, "/")+1:] // a registry's :port is before the last /
	_, tag, ok := strings.Cut(last, ":")
	switch {
	case !ok || tag == "":
		return fmt.Sprintf("image %q has no tag, so it pulls whatever :latest is that day; pin a version", ref)
	case tag == "latest":
		return fmt.Sprintf("image %q uses :latest; pin a version", ref)
	}
	return ""
}

// splitImage splits a reference into name and tag ("" when it has none); a
// registry's :port is part of the name. A digest stays with the tag.
func splitImage(ref string) (name, tag string) {
	digest := ""
	if i := strings.Index(ref, "@"); i >= 0 {
		ref, digest = ref[:i], ref[i:]
	}
	slash := strings.LastIndex(ref, "/")
	if i := strings.Index(ref[slash+1:], ":"); i >= 0 {
		return ref[:slash+1+i], ref[slash+2+i:] + digest
	}
	return ref, digest
}

// dockerBuild is the go build command of the Dockerfile.
type dockerBuild struct {
	env  []string // NAME=value before go
	args []string // after "go", starting with "build"
}

// goBuildRE finds the go build command among && or ; separated commands.
var goBuildRE = regexp.MustCompile(`(^|&&|;)\s*((?:[A-Z_][A-Z0-9_]*=\S*\s+)*go\s+build\b[^&;]*)`)

// goBuild extracts the go build command from a RUN instruction, expanding
// $VERSION to version; ok is false when the RUN has no go build.
func goBuild(run dockerInstr, version string) (dockerBuild, bool, error) {
	// Drop RUN's own flags (--mount=…, --network=…).
	args := run.args
	for strings.HasPrefix(args, "--") {
		_, rest, _ := strings.Cut(args, " ")
		args = strings.TrimSpace(rest)
	}
	m := goBuildRE.FindStringSubmatch(args)
	if m == nil {
		return dockerBuild{}, false, nil
	}
	words, err := shellWords(m[2], map[string]string{"VERSION": version})
	if err != nil {
		return dockerBuild{}, true, fmt.Errorf("line %d: %w", run.line, err)
	}
	var b dockerBuild
	for len(words) > 0 && words[0] != "go" {
		b.env = append(b.env, words[0])
		words = words[1:]
	}
	b.args = words[1:]
	return b, true, nil
}

// flagValue returns the value of -name or --name in args (as "-name v" or
// "-name=v").
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		a = strings.TrimPrefix(a, "-")
		a = strings.TrimPrefix(a, "-")
		if a == name && i+1 < len(args) {
			return args[i+1], true
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// checkDockerfile checks the image is built the way the brief says:
// multi-stage, pinned bases, a Go builder no older than go.mod asks,
// CGO_ENABLED=0 with -trimpath and -ldflags "-s -w -X main.version=${VERSION}",
// and a runtime stage running /mailferry serve as a numeric non-root user
// with the service ports exposed. goVersion is go.mod's go directive.
func checkDockerfile(data, goVersion string) []string {
	var ps problems
	stages, err := parseDockerfile(data)
	if err != nil {
		return []string{"Dockerfile: " + err.Error()}
	}
	if len(stages) < 2 {
		ps.add("Dockerfile: one stage; build in a golang stage and copy the binary into a small runtime stage")
	}
	names := map[string]bool{}
	var builder *dockerStage
	for i := range stages {
		s := &stages[i]
		if !names[s.image] && s.image != "scratch" {
			if p := checkImageRef(s.image); p != "" {
				ps.add("Dockerfile:%d: %s", s.from.line, p)
			}
		}
		if s.name != "" {
			names[s.name] = true
		}
		for _, in := range s.instrs {
			if in.cmd != "RUN" || !strings.Contains(in.args, "go build") {
				continue
			}
			builder = s
			raw, _, err := goBuild(in, "${VERSION}")
			if err != nil {
				ps.add("Dockerfile:%d: %v", in.line, err)
				continue
			}
			ps = append(ps, checkBuildFlags(fmt.Sprintf("Dockerfile:%d", in.line), raw)...)
			if !slices.ContainsFunc(s.instrs, func(a dockerInstr) bool {
				name, _, _ := strings.Cut(a.args, "=")
				return a.cmd == "ARG" && name == "VERSION" && a.line < in.line
			}) {
				ps.add("Dockerfile:%d: go build uses ${VERSION} but the stage declares no ARG VERSION before it", in.line)
			}
		}
	}
	if builder == nil {
		ps.add("Dockerfile: no RUN with go build")
	} else {
		ref := builder.image
		repo, tag, _ := strings.Cut(ref[strings.LastIndex(ref, "/")+1:], ":")
		if repo != "golang" {
			ps.add("Dockerfile:%d: the builder stage is %s; use the official golang image", builder.from.line, ref)
		} else if v, _, _ := strings.Cut(tag, "-"); goVersion != "" && versionLess(v, goVersion) {
			ps.add("Dockerfile:%d: builder %s is older than go.mod's go %s", builder.from.line, ref, goVersion)
		}
	}
	final := stages[len(stages)-1]
	at := func() string { return fmt.Sprintf("Dockerfile:%d (final stage)", final.from.line) }
	if builder != nil && &stages[len(stages)-1] == builder {
		ps.add("%s: the binary is built in the stage that ships; copy it into a runtime stage", at())
	}
	var user, entrypoint, cmd string
	var exposed []string
	copied := false
	for _, in := range final.instrs {
		switch in.cmd {
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = in.args
		case "CMD":
			cmd = in.args
		case "EXPOSE":
			for _, p := range strings.Fields(in.args) {
				p, _, _ = strings.Cut(p, "/")
				exposed = append(exposed, p)
			}
		case "COPY":
			if strings.Contains(in.args, "--from=") && strings.HasSuffix(in.args, " /mailferry") {
				copied = true
			}
		}
	}
	if !copied {
		ps.add("%s: no COPY --from=<builder> … /mailferry", at())
	}
	uid, _, _ := strings.Cut(user, ":")
	switch n, err := strconv.Atoi(uid); {
	case user == "":
		ps.add("%s: no USER; the image must not run as root", at())
	case err != nil:
		ps.add("%s: USER %s is not numeric; Kubernetes' runAsNonRoot can only verify a numeric user", at(), user)
	case n == 0:
		ps.add("%s: USER %s is root", at(), user)
	}
	var ep, cm []string
	if err := json.Unmarshal([]byte(entrypoint), &ep); err != nil || !slices.Equal(ep, []string{"/mailferry"}) {
		ps.add(`%s: ENTRYPOINT is %q; want ["/mailferry"] (exec form, so signals reach mailferry)`, at(), entrypoint)
	}
	if err := json.Unmarshal([]byte(cmd), &cm); err != nil || !slices.Equal(cm, []string{"serve"}) {
		ps.add(`%s: CMD is %q; want ["serve"]`, at(), cmd)
	}
	for _, p := range []string{"8080", "587", "465"} {
		if !slices.Contains(exposed, p) {
			ps.add("%s: port %s is not in EXPOSE (have %v)", at(), p, exposed)
		}
	}
	return ps
}

// checkBuildFlags checks a go build command (with ${VERSION} unexpanded)
// makes a static, reproducible, stamped binary of ./cmd/mailferry.
func checkBuildFlags(where string, b dockerBuild) []string {
	var ps problems
	if !slices.Contains(b.env, "CGO_ENABLED=0") {
		ps.add("%s: go build without CGO_ENABLED=0 may link libc dynamically (env: %v)", where, b.env)
	}
	if !slices.Contains(b.args, "-trimpath") {
		ps.add("%s: go build without -trimpath puts build paths in the binary", where)
	}
	ld, _ := flagValue(b.args, "ldflags")
	ldWords := strings.Fields(ld)
	for _, want := range []string{"-s", "-w"} {
		if !slices.Contains(ldWords, want) {
			ps.add("%s: -ldflags %q lacks %s", where, ld, want)
		}
	}
	if !strings.Contains(ld, "-X main.version=${VERSION}") {
		ps.add("%s: -ldflags %q does not stamp -X main.version=${VERSION}", where, ld)
	}
	if len(b.args) == 0 || b.args[len(b.args)-1] != "./cmd/mailferry" {
		ps.add("%s: go build does not end with the package ./cmd/mailferry (args %v)", where, b.args)
	}
	return ps
}

// versionLess compares dotted versions numerically; a shorter version
// stands for its whole series (1.26 is not less than 1.26.8).
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		x, _ := strconv.Atoi(as[i])
		y, _ := strconv.Atoi(bs[i])
		if x != y {
			return x < y
		}
	}
	return false
}

// goDirective reads the go line of go.mod.
func goDirective(gomod string) string {
	for _, line := range strings.Split(gomod, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "go "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func TestDockerfile(t *testing.T) {
	root := repoRoot(t)
	report(t, checkDockerfile(string(readRepoFile(t, root, "Dockerfile")), goDirective(string(readRepoFile(t, root, "go.mod")))))
}

// TestDockerignore: the build context must leave out what the image does
// not need and what must not leak into it.
func TestDockerignore(t *testing.T) {
	root := repoRoot(t)
	lines := map[string]bool{}
	for _, l := range strings.Split(string(readRepoFile(t, root, ".dockerignore")), "\n") {
		lines[strings.TrimPrefix(strings.TrimSpace(l), "/")] = true
	}
	for _, want := range []string{".git", ".run", ".env", "bin"} {
		if !lines[want] {
			t.Errorf(".dockerignore: %s is not excluded from the build context", want)
		}
	}
	for l := range lines {
		for _, needed := range []string{"go.mod", "go.sum", "cmd", "*.go", "**/*.go", "migrations"} {
			if l == needed {
				t.Errorf(".dockerignore excludes %s, which the build needs", l)
			}
		}
	}
}
