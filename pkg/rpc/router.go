package rpc

import (
	"context"
	"fmt"
	"strings"

	"voipbin/pkg/apierr"
)

// HandlerFunc serves one request. A returned error becomes a typed error reply (apierr.From).
type HandlerFunc func(ctx context.Context, r *Request) (*Response, error)

type route struct {
	method   string
	segments []string // "{name}" captures one segment
	pattern  string
	h        HandlerFunc
}

// router matches "METHOD /v1/calls/{id}" patterns; exact segments beat captures.
type router struct{ routes []route }

func (rt *router) handle(pattern string, h HandlerFunc) {
	method, path, ok := strings.Cut(pattern, " ")
	if !ok || !strings.HasPrefix(path, "/") {
		panic(fmt.Sprintf("rpc: bad route pattern %q, want \"METHOD /path\"", pattern))
	}
	rt.routes = append(rt.routes, route{method: method, segments: split(path), pattern: pattern, h: h})
}

func split(path string) []string { return strings.Split(strings.Trim(path, "/"), "/") }

// match finds the handler for method and path, or a ROUTE_NOT_FOUND/METHOD_NOT_ALLOWED error.
func (rt *router) match(method, path string) (route, map[string]string, error) {
	segs := split(path)
	pathMatched := false
	var best *route
	var bestParams map[string]string
	bestScore := -1
	for i := range rt.routes {
		r := &rt.routes[i]
		params, score, ok := matchSegments(r.segments, segs)
		if !ok {
			continue
		}
		pathMatched = true
		if r.method == method && score > bestScore {
			best, bestParams, bestScore = r, params, score
		}
	}
	if best != nil {
		return *best, bestParams, nil
	}
	if pathMatched {
		return route{}, nil, apierr.Newf(apierr.MethodNotAllowed, apierr.ReasonMethodNotAllowed, "method %s not allowed on %s", method, path)
	}
	return route{}, nil, apierr.Newf(apierr.NotFound, apierr.ReasonRouteNotFound, "no route %s %s", method, path)
}

func matchSegments(pattern, segs []string) (map[string]string, int, bool) {
	if len(pattern) != len(segs) {
		return nil, 0, false
	}
	var params map[string]string
	score := 0
	for i, p := range pattern {
		if strings.HasPrefix(p, "{") && strings.HasSuffix(p, "}") {
			if segs[i] == "" {
				return nil, 0, false
			}
			if params == nil {
				params = map[string]string{}
			}
			params[p[1:len(p)-1]] = segs[i]
			continue
		}
		if p != segs[i] {
			return nil, 0, false
		}
		score++
	}
	return params, score, true
}
