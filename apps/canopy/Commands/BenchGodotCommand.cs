using System.CommandLine;
using System.Diagnostics;

namespace Canopy.Cli.Commands;

/// <summary>
/// <c>canopy bench godot</c>: the Godot sync benchmark of issue 6 (tools/godot-harness/bench.sh): a local 3-server
/// cluster, two real Godot 4.6 instances in headless Chromium (A on server 1 moves N entities at 20 Hz through its
/// ClusterSynchronizers, B on server 2 applies them through its subscription) against a bare WebSocket relay between
/// the same two instances (the floor). Prints the script's JSON on stdout; results in docs/benchmarks.md.
/// </summary>
internal static class BenchGodotCommand
{
    public static Command Build()
    {
        var n = new Option<string>("--n") { Description = "Entity counts to run, comma-separated.", HelpName = "n1,n2", DefaultValueFactory = _ => "10,50,100,200,400" };
        var duration = Options.Duration("--duration", "Measured time per entity count.", TimeSpan.FromSeconds(10));
        var hz = Options.Int("--hz", "Updates per second of each entity.", 20, 1, 240);
        var cmd = new Command("godot", "Godot sync latency and capacity (real engine, 3 servers) against a bare WebSocket relay; needs Node.js and Chromium (installed on first use).")
        {
            n, duration, hz,
        };
        cmd.SetAction(async (parseResult, ct) =>
        {
            var script = FindScript() ?? throw new CliException("tools/godot-harness/bench.sh was not found above the canopy binary (run ./canopy from the repository)");
            var psi = new ProcessStartInfo("bash") { UseShellExecute = false };
            psi.ArgumentList.Add(script);
            psi.Environment["BENCH_N"] = parseResult.GetValue(n)!;
            psi.Environment["BENCH_DURATION_MS"] = ((long)(parseResult.GetValue(duration) ?? TimeSpan.FromSeconds(10)).TotalMilliseconds).ToString(System.Globalization.CultureInfo.InvariantCulture);
            psi.Environment["BENCH_HZ"] = parseResult.GetValue(hz).ToString(System.Globalization.CultureInfo.InvariantCulture);
            using var p = Process.Start(psi) ?? throw new CliException("could not start bash");
            try
            {
                await p.WaitForExitAsync(ct);
            }
            catch (OperationCanceledException)
            {
                p.Kill(entireProcessTree: true);
                throw;
            }

            return p.ExitCode == 0 ? ExitCodes.Success : ExitCodes.Failure;
        });
        return cmd;
    }

    private static string? FindScript()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "tools", "godot-harness", "bench.sh");
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        var cwd = Path.Combine(Environment.CurrentDirectory, "tools", "godot-harness", "bench.sh");
        return File.Exists(cwd) ? cwd : null;
    }
}
