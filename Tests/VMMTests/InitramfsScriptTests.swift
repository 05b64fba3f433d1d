import Foundation
import Testing

/// Runs `command` with bash; returns its status and what it printed.
func shell(_ command: String) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/bash")
    process.arguments = ["-c", command]
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// The package root, from this file's path (Tests/VMMTests/...).
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

/// Builds an initramfs with scripts/build-initramfs.sh into a new temporary file.
func buildInitramfs(command: String? = nil) throws -> String {
    let output = FileManager.default.temporaryDirectory.appendingPathComponent("initramfs-\(UUID().uuidString).cpio.gz").path
    let quoted = command.map { " '" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" } ?? ""
    let result = try shell("'\(packageRoot)/scripts/build-initramfs.sh' '\(output)'\(quoted)")
    guard result.status == 0 else {
        throw InitramfsFailed(output: result.output)
    }
    return output
}

struct InitramfsFailed: Error, CustomStringConvertible {
    var output: String
    var description: String {
        "scripts/build-initramfs.sh failed (scripts/test installs busybox-static and cpio): \(output)"
    }
}

struct InitramfsScriptTests {
    @Test func theScriptBuildsANewcArchiveWithInitAndBusybox() throws {
        let path = try buildInitramfs(command: "echo it's here")
        defer { try? FileManager.default.removeItem(atPath: path) }
        // newc: every header starts with "070701".
        let magic = try shell("zcat '\(path)' | head -c 6")
        #expect(magic.output == "070701")
        let listing = try shell("zcat '\(path)' | cpio -t --quiet")
        #expect(listing.status == 0)
        let names = Set(listing.output.split(separator: "\n").map(String.init))
        for name in ["init", "bin/busybox", "bin/sh", "bin/mount", "bin/poweroff", "proc", "sys", "dev", "etc/command"] {
            #expect(names.contains(name), "\(name) missing from \(names.sorted().prefix(20))")
        }
        let verbose = try shell("zcat '\(path)' | cpio -tv --quiet init bin/busybox")
        #expect(verbose.output.contains("-rwxr-xr-x"), "\(verbose.output)")
        let initScript = try shell("zcat '\(path)' | cpio -i --to-stdout --quiet init")
        #expect(initScript.output.hasPrefix("#!/bin/busybox sh\n"))
        #expect(initScript.output.contains("mount -t proc proc /proc"))
        #expect(initScript.output.contains("SWIFTKVM-INITRAMFS: init started"))
        #expect(initScript.output.contains("poweroff -f"))
        let command = try shell("zcat '\(path)' | cpio -i --to-stdout --quiet etc/command")
        #expect(command.output == "echo it's here\n")
    }

    @Test func theDefaultCommandPrintsTheKernelAndItsCPUs() throws {
        let path = try buildInitramfs()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let command = try shell("zcat '\(path)' | cpio -i --to-stdout --quiet etc/command")
        #expect(command.output == "uname -a; cat /proc/cpuinfo\n")
    }

    @Test func theScriptSaysHowToCallIt() throws {
        let result = try shell("'\(packageRoot)/scripts/build-initramfs.sh'")
        #expect(result.status == 64)
        #expect(result.output.contains("usage:"))
    }
}
