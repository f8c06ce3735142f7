"""Media jobs run by FFmpeg: finding the binary, building its command lines, reading its failures.

FFmpeg does the camera-side RTSP work (DESIGN §1 and §3) because it copes with the widest range of
real cameras; the hub only builds command lines here and reads the packets FFmpeg publishes to it.
"""
