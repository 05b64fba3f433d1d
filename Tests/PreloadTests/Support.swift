import Foundation
import Testing
@_exported import KVMTestSupport  // HostKVM and RealModeGuest, for every file of this test target

/// What a program printed and how it ended.
struct Outcome: Equatable, CustomStringConvertible {
    var status: Int32
    var lines: [String]

    var description: String { "status \(status):\n" + lines.joined(separator: "\n") }
}

/// The project's C test programs (tests/c), built with gcc, run directly and
/// under `swiftkvm exec`.
enum CPrograms {
    static let sources = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("tests/c")

    /// The build directory: swiftkvm and libKVMPreload.so are built beside the test bundle.
    static let buildDirectory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()

    static var swiftkvm: URL { buildDirectory.appendingPathComponent("swiftkvm") }
    static var library: URL { buildDirectory.appendingPathComponent("libKVMPreload.so") }

    /// One directory per test process for the built programs.
    static let outputDirectory: URL = {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-preload-\(getpid())")
        try? FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }()

    /// Builds tests/c/NAME.c; each test builds its own programs, under a unique name.
    static func build(_ name: String, flags: [String] = []) throws -> URL {
        let output = outputDirectory.appendingPathComponent("\(name)-\(UUID().uuidString)")
        let source = sources.appendingPathComponent("\(name).c").path
        let result = try run("/usr/bin/gcc", ["-O1", "-Wall", "-Werror", "-pthread"] + flags + ["-o", output.path, source])
        try #require(result.status == 0, "gcc failed for \(name).c: \(result)")
        return output
    }

    /// Runs the program on the host's /dev/kvm.
    static func runOnHost(_ program: URL, _ arguments: [String] = []) throws -> Outcome {
        try run(program.path, arguments)
    }

    /// Runs the program under `swiftkvm exec`, on SoftKVM.
    static func runOnSoftKVM(_ program: URL, _ arguments: [String] = []) throws -> Outcome {
        try #require(FileManager.default.fileExists(atPath: swiftkvm.path), "swiftkvm is not built at \(swiftkvm.path)")
        try #require(FileManager.default.fileExists(atPath: library.path), "libKVMPreload.so is not built at \(library.path)")
        return try run(swiftkvm.path, ["exec", "--", program.path] + arguments)
    }

    /// Runs a program to its end with stderr joined to stdout.
    static func run(_ executable: String, _ arguments: [String]) throws -> Outcome {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        return Outcome(status: process.terminationStatus, lines: lines)
    }
}
