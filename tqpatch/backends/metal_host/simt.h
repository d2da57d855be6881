// SIMT execution of Metal kernels on the host, for tqpatch's host emulation.
//
// Every thread of a threadgroup runs the kernel function on its own fiber
// (ucontext), one fiber at a time on one OS thread. A fiber runs until it
// reaches a collective -- a SIMD-group reduction or shuffle, a simdgroup
// matrix load, a SIMD-group or threadgroup barrier -- and waits there until
// every live thread of that group has arrived, as a GPU's threads do. Threadgroup memory is one buffer
// shared by the fibers of a threadgroup; device memory is host memory.
// Deterministic: the same kernel and inputs give the same bytes every run.
#pragma once

#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

namespace tq_simt {

struct uint3_t {
    uint32_t x, y, z;
};

// where a thread is: the Metal kernel attributes a kernel may ask for
struct thread_pos {
    uint3_t tgpig;   // threadgroup_position_in_grid
    uint3_t tpitg;   // thread_position_in_threadgroup
    uint3_t ntg;     // threads_per_threadgroup
    uint3_t tpig;    // thread_position_in_grid
    uint32_t tiitg;  // thread_index_in_threadgroup
    uint32_t tiisg;  // thread_index_in_simdgroup
    uint32_t sgitg;  // simdgroup_index_in_threadgroup
};

constexpr int SIMD_WIDTH = 32;
constexpr size_t SLOT_BYTES = 64;          // the largest value a SIMD-group exchanges (float4x4)
constexpr size_t STACK_BYTES = 256 * 1024;

struct group {
    int alive = 0;        // members that have not finished
    int arrived = 0;
    uint64_t generation = 0;
    unsigned char slots[SIMD_WIDTH][SLOT_BYTES];
};

struct fiber {
    ucontext_t ctx;
    char * stack = nullptr;
    thread_pos pos;
    bool done = false;
    group * waiting_on = nullptr;
    uint64_t waiting_gen = 0;
};

struct runtime {
    ucontext_t scheduler;
    std::vector<fiber> fibers;
    std::vector<group> simd_groups;
    group threadgroup;
    int current = -1;
    const std::function<void(const thread_pos &)> * body = nullptr;
};

inline runtime & rt() {
    static runtime r;
    return r;
}

inline fiber & self() {
    return rt().fibers[rt().current];
}

inline group & my_simd_group() {
    return rt().simd_groups[self().pos.sgitg];
}

inline void release_if_complete(group & g) {
    if (g.arrived > 0 && g.arrived >= g.alive) {
        g.arrived = 0;
        g.generation++;
    }
}

// wait until every live member of g has arrived here; the last to arrive
// yields too, so that the scheduler, not the arrival order, decides who goes on first
inline void arrive(group & g) {
    fiber & f = self();
    f.waiting_on = &g;
    f.waiting_gen = g.generation;
    g.arrived++;
    if (g.arrived >= g.alive) {
        g.arrived = 0;
        g.generation++;
    }
    swapcontext(&f.ctx, &rt().scheduler);
    f.waiting_on = nullptr;
}

inline void fiber_main() {
    runtime & r = rt();
    fiber & f = r.fibers[r.current];
    (*r.body)(f.pos);
    f.done = true;
    group & sg = r.simd_groups[f.pos.sgitg];
    sg.alive--;
    release_if_complete(sg);
    r.threadgroup.alive--;
    release_if_complete(r.threadgroup);
    setcontext(&r.scheduler);
}

// run `body` for every thread of one threadgroup of `ntg` threads at `tgpig` in a grid of `ngrid`
inline void run_threadgroup(uint3_t ngrid, uint3_t tgpig, uint3_t ntg,
                            const std::function<void(const thread_pos &)> & body) {
    (void) ngrid;
    runtime & r = rt();
    const int n = (int) (ntg.x * ntg.y * ntg.z);
    const int n_sg = (n + SIMD_WIDTH - 1) / SIMD_WIDTH;
    if ((int) r.fibers.size() < n) {
        r.fibers.resize(n);
    }
    r.simd_groups.assign(n_sg, group());
    r.threadgroup = group();
    r.threadgroup.alive = n;
    r.body = &body;
    for (int i = 0; i < n; ++i) {
        fiber & f = r.fibers[i];
        if (!f.stack) {
            f.stack = (char *) malloc(STACK_BYTES);
        }
        f.done = false;
        f.waiting_on = nullptr;
        thread_pos & p = f.pos;
        p.tgpig = tgpig;
        p.ntg = ntg;
        p.tpitg = {(uint32_t) (i % ntg.x), (uint32_t) ((i / ntg.x) % ntg.y), (uint32_t) (i / (ntg.x * ntg.y))};
        p.tpig = {tgpig.x * ntg.x + p.tpitg.x, tgpig.y * ntg.y + p.tpitg.y, tgpig.z * ntg.z + p.tpitg.z};
        p.tiitg = (uint32_t) i;
        p.tiisg = (uint32_t) (i % SIMD_WIDTH);
        p.sgitg = (uint32_t) (i / SIMD_WIDTH);
        r.simd_groups[p.sgitg].alive++;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = STACK_BYTES;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main, 0);
    }
    // Between two collectives the lanes of a real SIMD-group run in lockstep;
    // here one lane runs that stretch after another. Kernels make a lane's
    // write visible to others through a barrier or a SIMD-group function, but
    // they do rely on lockstep when lane 0 writes a result over shared values
    // the other lanes read just before (fa_vec_common.metal: S and M over the
    // softmax weights): running the highest lane first and lane 0 last keeps
    // that order.
    for (;;) {
        bool all_done = true;
        bool progress = false;
        for (int i = n - 1; i >= 0; --i) {
            fiber & f = r.fibers[i];
            if (f.done) {
                continue;
            }
            all_done = false;
            if (f.waiting_on && f.waiting_on->generation == f.waiting_gen) {
                continue;
            }
            r.current = i;
            swapcontext(&r.scheduler, &f.ctx);
            r.current = -1;
            progress = true;
        }
        if (all_done) {
            break;
        }
        if (!progress) {
            fprintf(stderr, "simt: deadlock in threadgroup (%u,%u,%u): threads wait at different barriers\n",
                    tgpig.x, tgpig.y, tgpig.z);
            abort();
        }
    }
}

// dispatch_threadgroups(grid, threads per threadgroup): every threadgroup in order
inline void dispatch(uint3_t ngrid, uint3_t ntg, const std::function<void(const thread_pos &)> & body) {
    for (uint32_t z = 0; z < ngrid.z; ++z) {
        for (uint32_t y = 0; y < ngrid.y; ++y) {
            for (uint32_t x = 0; x < ngrid.x; ++x) {
                run_threadgroup(ngrid, {x, y, z}, ntg, body);
            }
        }
    }
}

// ---- SIMD-group exchange: every lane deposits a value, then reads any lane's

template <typename T>
inline void deposit(const T & v) {
    static_assert(sizeof(T) <= SLOT_BYTES, "value too large for a SIMD-group exchange");
    memcpy(my_simd_group().slots[self().pos.tiisg], &v, sizeof(T));
    arrive(my_simd_group());
}

template <typename T>
inline T lane_value(int lane) {
    T v;
    memcpy(&v, my_simd_group().slots[lane], sizeof(T));
    return v;
}

inline int simd_lanes() {
    // the members of this SIMD-group (all of them, finished or not: a finished
    // lane's slot keeps its last value, as the hardware keeps an inactive lane's)
    const runtime & r = rt();
    const int n = (int) (self().pos.ntg.x * self().pos.ntg.y * self().pos.ntg.z);
    const int first = (int) self().pos.sgitg * SIMD_WIDTH;
    return n - first < SIMD_WIDTH ? n - first : SIMD_WIDTH;
    (void) r;
}

inline void done_reading() {
    arrive(my_simd_group());
}

inline void simdgroup_barrier() {
    arrive(my_simd_group());
}

inline void threadgroup_barrier() {
    arrive(rt().threadgroup);
}

} // namespace tq_simt
