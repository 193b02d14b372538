// Package deploycheck has no code of its own, only tests: the static checks
// CI runs on the deployment files (Dockerfile, docker-compose.yml and
// everything under deploy/), since no machine here has a Docker engine or a
// Kubernetes cluster to try them on.
//
// The tests parse every file and check it against the code it deploys: the
// environment variables config.Vars lists, the metric names the Go source
// defines, the commands and roles the binary accepts, pinned image tags,
// hardened Kubernetes pods, and a binary built with the Dockerfile's own
// flags that must come out statically linked. Each failure names the file,
// the place in it and what is wrong.
package deploycheck
