using System.Runtime.CompilerServices;

namespace Canopy.Client.Tests;

internal static class TestSetup
{
    /// <summary>
    /// The test host keeps some thread-pool threads blocked; on a 2-core machine the pool then starts with a single
    /// free thread and grows by one every ~0.5 s, which stalls the fake servers and the client alike and breaks the
    /// wall-clock assertions (deadlines, backoff). More threads from the start remove that noise.
    /// </summary>
    [ModuleInitializer]
    internal static void Init()
    {
        ThreadPool.GetMinThreads(out var workers, out var io);
        ThreadPool.SetMinThreads(Math.Max(workers, 16), Math.Max(io, 16));
    }
}
