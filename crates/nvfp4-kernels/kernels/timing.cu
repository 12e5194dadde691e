// Benchmark support: keeps the GPU busy for `ns` nanoseconds so that the work
// enqueued after it runs back to back, without waiting for the CPU to launch
// it; events around that work then time the GPU alone.
extern "C" __global__ void nvfp4_spin(u64 ns) {
    u64 start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
}
