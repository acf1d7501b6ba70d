// GodotHarness: runs tools/godot-harness (real Godot 4.6 instances in headless Chromium) from the tests and reads
// its JSON-lines report.
// - Setup (once per test process): tools/godot-harness/setup.sh installs Chromium with apt-get when it is missing,
//   runs `npm ci` for the pinned playwright-core and fetches + sha256-checks the engine. Exit 3 = Chromium cannot be
//   installed: the engine tests are skipped with setup.sh's message ([GodotFact]). Any other failure fails them.
// - RunAsync starts `node harness.mjs --spec-json ...`, hands every event to the caller as it arrives (so a test can
//   act on a mark, e.g. kill a server), and returns every instance's exit record. Bounded by a deadline.
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace Canopy.Godot.Tests;

/// <summary>An xUnit fact that is skipped only when Chromium is missing and cannot be installed.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class GodotFactAttribute : FactAttribute
{
    public GodotFactAttribute()
    {
        if (GodotHarness.SkipReason is { } reason)
        {
            Skip = reason;
        }
    }
}

/// <summary>One Godot instance of a harness run.</summary>
public sealed record GodotInstance(string Name, IReadOnlyList<string> Args, int DeadlineMs = 50_000, int StartDelayMs = 0);

/// <summary>One JSON line of the harness.</summary>
public sealed record HarnessEvent(string Kind, string? Instance, JsonObject Json)
{
    public string? Name => (string?)Json["name"];

    public string? Text => (string?)Json["text"];
}

/// <summary>The exit record of one instance.</summary>
public sealed record InstanceResult(string Name, int? Code, bool TimedOut, bool Crashed, string? Banner, int AssertsPassed, int AssertsFailed, IReadOnlyList<string> Failures, long ElapsedMs);

public sealed class HarnessRun
{
    public List<HarnessEvent> Events { get; } = [];

    public Dictionary<string, InstanceResult> Results { get; } = [];

    public bool Done { get; set; }

    internal Process? Process { get; set; }

    /// <summary>Queues a message for an instance's CanopyTest.wait_message() (the harness's stdin "send").</summary>
    public async Task SendAsync(string instance, string text)
    {
        if (Process is { } p)
        {
            await p.StandardInput.WriteLineAsync(new JsonObject { ["cmd"] = "send", ["instance"] = instance, ["text"] = text }.ToJsonString());
            await p.StandardInput.FlushAsync();
        }
    }

    public string Transcript(string? instance = null) => string.Join('\n', Events
        .Where(e => instance is null || e.Instance == instance)
        .Where(e => e.Kind is "print" or "assert" or "mark" or "exit" or "fatal")
        .Select(e => $"[{e.Instance}] {e.Kind}: {e.Json.ToJsonString()}"));

    public IEnumerable<HarnessEvent> Marks(string instance, string name) =>
        Events.Where(e => e.Kind == "mark" && e.Instance == instance && e.Name == name);
}

public static class GodotHarness
{
    private static readonly Lazy<(string? Skip, string? Error)> Setup = new(RunSetup);

    public static string RepoRoot { get; } = FindRepoRoot();

    public static string HarnessDir => Path.Combine(RepoRoot, "tools", "godot-harness");

    /// <summary>Why the engine tests are skipped (Chromium missing and not installable), or null.</summary>
    public static string? SkipReason => Setup.Value.Skip;

    /// <summary>
    /// Runs the instances at once and returns when all have exited (or <paramref name="deadline"/> passed: then fails).
    /// <paramref name="onEvent"/> sees every event as it arrives (it may act, e.g. kill a server, or answer an instance
    /// with <see cref="HarnessRun.SendAsync"/>). <paramref name="project"/>: another Godot project to pack (relative to
    /// the repository root, e.g. <c>clients/godot/demo</c>; default: the harness's test project).
    /// </summary>
    public static async Task<HarnessRun> RunAsync(IReadOnlyList<GodotInstance> instances, ITestOutputHelper output, TimeSpan deadline, Func<HarnessEvent, HarnessRun, Task>? onEvent = null, string? project = null)
    {
        if (Setup.Value.Error is { } error)
        {
            throw new XunitException($"tools/godot-harness/setup.sh failed: {error}");
        }

        var spec = new JsonObject
        {
            ["instances"] = new JsonArray([.. instances.Select(i => (JsonNode)new JsonObject
            {
                ["name"] = i.Name,
                ["args"] = new JsonArray([.. i.Args.Select(a => (JsonNode)JsonValue.Create(a))]),
                ["deadline_ms"] = i.DeadlineMs,
                ["start_delay_ms"] = i.StartDelayMs,
            })]),
        };
        if (project is not null)
        {
            spec["project"] = project;
        }

        var psi = new ProcessStartInfo("node")
        {
            WorkingDirectory = HarnessDir,
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
        };
        psi.ArgumentList.Add("harness.mjs");
        psi.ArgumentList.Add("--spec-json");
        psi.ArgumentList.Add(spec.ToJsonString());
        using var process = Process.Start(psi) ?? throw new XunitException("cannot start node");
        var run = new HarnessRun { Process = process };
        var stderr = new StringBuilder();
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is { } line)
            {
                lock (stderr)
                {
                    stderr.AppendLine(line);
                }
            }
        };
        process.BeginErrorReadLine();
        var clock = Stopwatch.StartNew();
        using var cts = new CancellationTokenSource(deadline);
        try
        {
            while (await process.StandardOutput.ReadLineAsync(cts.Token) is { } line)
            {
                JsonObject json;
                try
                {
                    json = JsonNode.Parse(line) as JsonObject ?? [];
                }
                catch (JsonException)
                {
                    output.WriteLine($"harness (not JSON): {line}");
                    continue;
                }

                var ev = new HarnessEvent((string?)json["event"] ?? "", (string?)json["instance"], json);
                lock (run)
                {
                    run.Events.Add(ev);
                }

                if (ev.Kind is "print" or "assert" or "mark" or "fatal")
                {
                    output.WriteLine($"[{clock.Elapsed.TotalSeconds,6:0.00}s {ev.Instance}] {ev.Kind}: {(ev.Kind == "print" ? ev.Text : json.ToJsonString())}");
                }

                if (ev.Kind == "exit" && ev.Instance is { } name)
                {
                    var result = new InstanceResult(name, (int?)json["code"], (bool?)json["timed_out"] ?? false, (bool?)json["crashed"] ?? false,
                        (string?)json["banner"], (int?)json["asserts_passed"] ?? 0, (int?)json["asserts_failed"] ?? 0,
                        [.. (json["failures"] as JsonArray ?? []).Select(f => (string?)f ?? "")], (long?)json["elapsed_ms"] ?? 0);
                    run.Results[name] = result;
                    output.WriteLine($"[{clock.Elapsed.TotalSeconds,6:0.00}s {name}] exit {result.Code} after {result.ElapsedMs} ms: {result.AssertsPassed} checks passed, {result.AssertsFailed} failed{(result.TimedOut ? ", TIMED OUT" : "")}{(result.Crashed ? ", CRASHED" : "")}");
                }

                if (ev.Kind == "done")
                {
                    run.Done = true;
                }

                if (onEvent is not null)
                {
                    await onEvent(ev, run);
                }
            }

            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            TryKill(process);
            throw new XunitException($"the harness did not finish within {deadline.TotalSeconds:0} s\n{run.Transcript()}\n{stderr}");
        }
        finally
        {
            run.Process = null;
            TryKill(process);
        }

        if (!run.Done)
        {
            throw new XunitException($"the harness ended without a result (exit {process.ExitCode}): {stderr}\n{run.Transcript()}");
        }

        return run;
    }

    private static void TryKill(Process p)
    {
        try
        {
            if (!p.HasExited)
            {
                p.Kill(entireProcessTree: true);
            }
        }
        catch (InvalidOperationException)
        {
            // gone
        }
    }

    private static (string? Skip, string? Error) RunSetup()
    {
        var psi = new ProcessStartInfo("bash")
        {
            WorkingDirectory = HarnessDir,
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        psi.ArgumentList.Add(Path.Combine(HarnessDir, "setup.sh"));
        try
        {
            using var p = Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(TimeSpan.FromMinutes(10)))
            {
                TryKill(p);
                return (null, "did not finish within 10 minutes");
            }

            var message = (stderr.Result + stdout.Result).Trim();
            return p.ExitCode switch
            {
                0 => (null, null),
                3 => ($"Godot engine tests skipped: Chromium is missing and cannot be installed. {message}", null),
                _ => (null, $"exit {p.ExitCode}: {message}"),
            };
        }
        catch (System.ComponentModel.Win32Exception ex)
        {
            return (null, $"cannot run bash: {ex.Message}");
        }
    }

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Canopy.slnx")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException($"cannot find Canopy.slnx above {AppContext.BaseDirectory}");
    }
}
