#!/usr/bin/env python3
"""Prints the import graph between the source files of a crate and exits 1
if it has a circle. A file's edges are the modules it names through
`crate::a::b`, `super::x` or `child::x` (in code, not comments, not its
tests); declaring a child (`mod child;`) is not an edge, using it is, and so
is a child naming its parent (`super::something` defined in mod.rs).

    scripts/module-graph.py engine/src gateway/src
"""
import os, re, sys

def modules(root):
    files = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            if f.endswith('.rs'):
                p = os.path.join(d, f)
                rel = os.path.relpath(p, root)[:-3]
                parts = rel.split(os.sep)
                if parts[-1] in ('mod', 'lib', 'main'):
                    parts = parts[:-1]
                files['::'.join(parts)] = p
    return files

def resolve(mods, base, path):
    # longest known module prefix of `path`
    parts = path.split('::')
    for n in range(len(parts), -1, -1):
        cand = '::'.join(parts[:n])
        if cand in mods:
            return cand
    return None

def strip(text):
    text = re.sub(r'//[^\n]*', '', text)
    # test modules may use what they like
    i = text.find('#[cfg(test)]\nmod tests')
    return text if i < 0 else text[:i]

def graph(root):
    mods = modules(root)
    edges = {m: set() for m in mods}
    for m, p in mods.items():
        text = strip(open(p).read())
        parent = '::'.join(m.split('::')[:-1]) if m else None
        own = m + '::' if m else ''
        for use in re.finditer(r'\bcrate((?:::\w+)+)', text):
            t = resolve(mods, m, use.group(1)[2:])
            if t is not None and t != m and not t.startswith(own):
                edges[m].add(t)
        for use in re.finditer(r'\bsuper((?:::\w+)+)', text):
            if parent is None:
                continue
            full = (parent + '::' if parent else '') + use.group(1)[2:]
            t = resolve(mods, m, full)
            if t is not None and t != m and not (t + '::').startswith(own):
                edges[m].add(t)
        # a parent naming its children (`use buffer::Elem`, not `mod buffer;`)
        for child in [c for c in mods if c.startswith(own) and '::' not in c[len(own):]]:
            name = child[len(own):]
            if re.search(r'(?<![\w:])' + name + r'::', text):
                edges[m].add(child)
        # braces: use super::{a, b::c}
        for grp in re.finditer(r'\b(crate|super)::\{([^}]*)\}', text):
            base = '' if grp.group(1) == 'crate' else (parent or '')
            for item in grp.group(2).split(','):
                item = item.strip().split(' ')[0]
                if not item or item == 'self':
                    continue
                full = (base + '::' if base else '') + item
                t = resolve(mods, m, full)
                if t is not None and t != m and not (t + '::').startswith(own):
                    edges[m].add(t)
    return edges

def cycles(edges):
    found, state, stack = [], {}, []
    def visit(n):
        state[n] = 1; stack.append(n)
        for t in sorted(edges[n]):
            if state.get(t) == 1:
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop(); state[n] = 2
    for n in sorted(edges):
        if n not in state:
            visit(n)
    return found

bad = False
for root in sys.argv[1:]:
    e = graph(root)
    print(f'== {root}')
    for m in sorted(e):
        print(f'  {m or "(root)"} -> {", ".join(sorted(x or "(root)" for x in e[m])) or "-"}')
    for c in cycles(e):
        bad = True
        print('  CIRCLE: ' + ' -> '.join(x or '(root)' for x in c))
sys.exit(1 if bad else 0)
