; Script-Fu side of the plug-in's tests in a real GIMP (see run-gimp-tests.sh).
; Each lcm-test-* procedure builds an image, calls the plug-in the way a
; script does, checks what it can inside GIMP and exports layers to PNG for
; the runner to compare with gimp-lcm-cli. A failed check raises an error,
; so the batch exits with status 70; success prints "LCM-TEST-PASSED name".

(script-fu-use-v3)

(define (check condition . message)
  (if (not condition)
      (error (apply string-append "check failed: " message))))

(define (layer-count image) (vector-length (gimp-image-get-layers image)))

; A pixel's colour components, without alpha (layers may differ in having it).
(define (take items n)
  (if (= n 0) '() (cons (car items) (take (cdr items) (- n 1)))))

(define (pixel-color drawable x y)
  (take (gimp-drawable-get-pixel drawable x y) (if (gimp-drawable-is-gray drawable) 1 3)))

(define (same-pixel? a ax ay b bx by)
  (equal? (pixel-color a ax ay) (pixel-color b bx by)))

; Writes a drawable's pixels alone (its own size, no offsets) to a PNG file.
(define (export-drawable image drawable path)
  (let* ((width (gimp-drawable-get-width drawable))
         (height (gimp-drawable-get-height drawable))
         (copy (gimp-image-new-with-precision width height (gimp-image-get-base-type image)
                                               (gimp-image-get-precision image)))
         (layer (gimp-layer-new-from-drawable drawable copy)))
    (gimp-image-insert-layer copy layer 0 0)
    (gimp-layer-set-offsets layer 0 0)
    (gimp-file-save RUN-NONINTERACTIVE copy path -1)
    (gimp-image-delete copy)))

; Selects a grey picture's values exactly (soft edges included): the
; picture, alone in the image, becomes a channel through its red component
; (a raw copy of the 8-bit values), and the channel the selection.
(define (select-picture image path)
  (let ((picture (gimp-file-load-layer RUN-NONINTERACTIVE image path)))
    (gimp-image-insert-layer image picture 0 0)
    (let ((channel (gimp-channel-new-from-component image CHANNEL-RED "selection")))
      (gimp-image-insert-channel image channel 0 0)
      (gimp-image-select-item image CHANNEL-OP-REPLACE channel)
      (gimp-image-remove-channel image channel))
    (gimp-image-remove-layer image picture)))

(define (passed name)
  (display (string-append "LCM-TEST-PASSED " name))
  (newline))

; (1) txt2img on a new image: a new 64x48 layer at the origin, above the
; selected layer, named from the prompt; clip-skip as given (0 = off).
(define (lcm-test-txt2img model clip-skip out)
  (let* ((image (gimp-image-new 96 80 RGB))
         (background (gimp-layer-new image "background" 96 80 RGB-IMAGE 100
                                     LAYER-MODE-NORMAL)))
    (gimp-image-insert-layer image background 0 0)
    (gimp-drawable-fill background FILL-WHITE)
    (let ((layer (plug-in-lcm-txt2img #:run-mode RUN-NONINTERACTIVE #:image image
                                      #:drawables (vector background) #:model model
                                      #:prompt "a red fox in the snow" #:seed 42
                                      #:width 64 #:height 48 #:clip-skip clip-skip)))
      (check (= (layer-count image) 2) "txt2img adds one layer")
      (check (= (vector-ref (gimp-image-get-layers image) 0) layer) "the new layer is on top")
      (check (= (gimp-drawable-get-width layer) 64) "width 64")
      (check (= (gimp-drawable-get-height layer) 48) "height 48")
      (check (equal? (gimp-drawable-get-offsets layer) '(0 0)) "at the image's origin")
      (check (equal? (gimp-item-get-name layer) "LCM: a red fox in the snow (seed 42)")
             "layer named from the prompt and seed: " (gimp-item-get-name layer))
      (export-drawable image layer (string-append out "/gimp.png")))
    (gimp-image-delete image)
    (passed "txt2img")))

; (2) img2img on an RGB layer: onto a new layer (default), then replacing the
; layer's pixels; both must equal the CLI's picture for the same arguments.
(define (lcm-test-img2img model source out)
  (let* ((image (gimp-file-load RUN-NONINTERACTIVE source))
         (source-layer (vector-ref (gimp-image-get-layers image) 0)))
    (gimp-layer-set-offsets source-layer 8 16)
    (let ((layer (plug-in-lcm-img2img #:run-mode RUN-NONINTERACTIVE #:image image
                                      #:drawables (vector source-layer) #:model model
                                      #:prompt "an oil painting" #:seed 7 #:strength 0.6)))
      (check (= (layer-count image) 2) "img2img adds one layer")
      (check (equal? (gimp-drawable-get-offsets layer) '(8 16)) "the new layer covers the source")
      (export-drawable image layer (string-append out "/gimp-new-layer.png")))
    (let ((layer (plug-in-lcm-img2img #:run-mode RUN-NONINTERACTIVE #:image image
                                      #:drawables (vector source-layer) #:model model
                                      #:prompt "an oil painting" #:seed 7 #:strength 0.6
                                      #:output 1)))
      (check (= layer source-layer) "replace returns the source layer")
      (check (= (layer-count image) 2) "replace adds no layer")
      (export-drawable image source-layer (string-append out "/gimp-replaced.png")))
    (gimp-image-delete image)
    (passed "img2img")))

; (3) inpainting through a soft-edged elliptic selection (selection.png,
; made by the runner: feathered by a blur, so the CLI can read the same
; values) on a layer placed at an offset in a larger image. Sizes are
; 512x384 times scale (the model's native side / 512: 1 for SD1.5, 2 for
; SDXL): the selection plus its context covers the whole layer, which is
; within the model's working sizes, so the model sees the layer unscaled and
; the result can be compared with the CLI's bit for bit.
(define (lcm-test-inpaint model scale source selection out)
  (define (s n) (* n scale))
  (let* ((image (gimp-image-new (s 600) (s 440) RGB))
         (background (gimp-layer-new image "background" (s 600) (s 440) RGB-IMAGE 100
                                     LAYER-MODE-NORMAL)))
    (select-picture image selection)
    (gimp-image-insert-layer image background 0 0)
    (gimp-drawable-fill background FILL-WHITE)
    (let ((source-layer (gimp-file-load-layer RUN-NONINTERACTIVE image source)))
      (gimp-image-insert-layer image source-layer 0 0)
      (gimp-layer-set-offsets source-layer (s 40) (s 32))
      (check (< 0 (gimp-selection-value image (s 290) (s 230)) 256) "the selection is loaded")
      (check (= (gimp-selection-value image (s 45) (s 40)) 0) "the corner is not selected")
      (let ((layer (plug-in-lcm-inpaint #:run-mode RUN-NONINTERACTIVE #:image image
                                        #:drawables (vector source-layer) #:model model
                                        #:prompt "a blue bird" #:seed 5)))
        (check (= (layer-count image) 3) "inpainting adds one layer")
        (check (= (vector-ref (gimp-image-get-layers image) 0) layer) "the new layer is on top")
        (check (equal? (gimp-drawable-get-offsets layer) (list (s 40) (s 32)))
               "the new layer is over the source")
        (check (= (gimp-drawable-get-width layer) (s 512)) "the new layer covers the source")
        ; Corners are outside the ellipse: the source's pixels exactly.
        (check (same-pixel? layer 0 0 source-layer 0 0) "top left pixel unchanged")
        (check (same-pixel? layer (- (s 512) 1) (- (s 384) 1)
                            source-layer (- (s 512) 1) (- (s 384) 1))
               "bottom right pixel unchanged")
        (export-drawable image layer (string-append out "/gimp.png"))))
    (gimp-image-delete image)
    (passed "inpaint")))

; (4) a greyscale image: read as RGB, written back as grey onto a grey layer.
(define (lcm-test-gray model source cli-result out)
  (let* ((image (gimp-file-load RUN-NONINTERACTIVE source))
         (source-layer (vector-ref (gimp-image-get-layers image) 0)))
    (check (= (gimp-image-get-base-type image) GRAY) "the source loads as a grey image")
    (let ((layer (plug-in-lcm-img2img #:run-mode RUN-NONINTERACTIVE #:image image
                                      #:drawables (vector source-layer) #:model model
                                      #:prompt "a charcoal drawing" #:seed 3 #:strength 0.7)))
      (check (= (layer-count image) 2) "img2img adds one layer")
      (check (gimp-drawable-is-gray layer) "the new layer is grey")
      (export-drawable image layer (string-append out "/gimp.png")))
    ; The CLI's RGB picture, turned grey by GIMP (babl) as the plug-in's is.
    (let ((cli-layer (gimp-file-load-layer RUN-NONINTERACTIVE image cli-result)))
      (gimp-image-insert-layer image cli-layer 0 0)
      (export-drawable image cli-layer (string-append out "/cli-gray.png")))
    (gimp-image-delete image)
    (passed "gray")))

; (5) wrong uses fail with an error and leave the image as it was: several
; selected layers, an indexed image, inpainting with nothing selected, a
; model that does not exist. The last failure is not caught, so the batch
; exits with status 70 and GIMP prints the plug-in's message.
(define (fails? thunk) (catch #t (begin (thunk) #f)))

(define (lcm-test-errors model bad-model)
  (let* ((image (gimp-image-new 64 64 RGB))
         (lower (gimp-layer-new image "lower" 64 64 RGB-IMAGE 100 LAYER-MODE-NORMAL))
         (upper (gimp-layer-new image "upper" 64 64 RGB-IMAGE 100 LAYER-MODE-NORMAL)))
    (gimp-image-insert-layer image lower 0 0)
    (gimp-image-insert-layer image upper 0 0)
    (gimp-drawable-fill lower FILL-WHITE)
    (gimp-drawable-fill upper FILL-WHITE)
    (define (unchanged?)
      (and (= (layer-count image) 2)
           (equal? (gimp-drawable-get-pixel upper 10 10) (gimp-drawable-get-pixel lower 10 10))))
    (check (fails? (lambda ()
                     (plug-in-lcm-img2img #:run-mode RUN-NONINTERACTIVE #:image image
                                          #:drawables (vector lower upper) #:model model)))
           "two selected layers are refused")
    (check (unchanged?) "image unchanged after two layers")
    (check (fails? (lambda ()
                     (plug-in-lcm-inpaint #:run-mode RUN-NONINTERACTIVE #:image image
                                          #:drawables (vector upper) #:model model)))
           "inpainting without a selection is refused")
    (check (unchanged?) "image unchanged after no selection")
    (check (fails? (lambda ()
                     (plug-in-lcm-img2img #:run-mode RUN-NONINTERACTIVE #:image image
                                          #:drawables (vector upper) #:model bad-model)))
           "a missing model is an error")
    (check (unchanged?) "image unchanged after a missing model")
    (let ((indexed (gimp-image-duplicate image)))
      (gimp-image-convert-indexed indexed CONVERT-DITHER-NONE CONVERT-PALETTE-GENERATE 16
                                  #f #f "")
      (check (fails? (lambda ()
                       (plug-in-lcm-img2img #:run-mode RUN-NONINTERACTIVE #:image indexed
                                            #:drawables (gimp-image-get-selected-drawables indexed)
                                            #:model model)))
             "indexed images are refused")
      (gimp-image-delete indexed))
    (display "LCM-TEST-CAUGHT-ALL")
    (newline)
    (plug-in-lcm-img2img #:run-mode RUN-NONINTERACTIVE #:image image
                         #:drawables (vector upper) #:model bad-model)))

; (7) Three txt2img calls in one batch, for the resident process: through
; the procedure, through the resident's twin directly (the same model and
; seed: the runner checks both pictures and that the model loaded once),
; then through the procedure with another model (xl-model).
(define (lcm-txt2img-layer procedure image background model out name)
  (let ((layer (procedure #:run-mode RUN-NONINTERACTIVE #:image image
                          #:drawables (vector background) #:model model
                          #:prompt "a red fox in the snow" #:seed 42 #:width 64 #:height 48)))
    (check (= (gimp-drawable-get-width layer) 64) "width 64")
    (export-drawable image layer (string-append out "/" name))))

(define (lcm-test-resident model xl-model out)
  (let* ((image (gimp-image-new 96 80 RGB))
         (background (gimp-layer-new image "background" 96 80 RGB-IMAGE 100
                                     LAYER-MODE-NORMAL))
         (twin? (gimp-pdb-procedure-exists "plug-in-lcm-resident-txt2img")))
    (gimp-image-insert-layer image background 0 0)
    (lcm-txt2img-layer plug-in-lcm-txt2img image background model out "gimp-1.png")
    (if twin?
        (lcm-txt2img-layer plug-in-lcm-resident-txt2img image background model out "gimp-2.png"))
    (lcm-txt2img-layer plug-in-lcm-txt2img image background xl-model out "gimp-xl.png")
    (check (= (layer-count image) (if twin? 4 3)) "a layer added per call")
    (gimp-image-delete image)
    (passed "resident")))


; The GUI session of gui-demo.sh: shows a picture with a feathered
; selection, then waits while the runner drives the menus and the dialog:
; first for the generated layer to appear above the picture, then for one
; undo (Ctrl+Z) to take it away again, leaving the picture as it was.
(define (wait-for-layer-count image count what)
  (let loop ((tries 0))
    (cond ((= (layer-count image) count) #t)
          ((> tries 2000000) (error (string-append "timed out waiting for " what)))
          (else (loop (+ tries 1))))))

(define (lcm-gui-session source)
  (let* ((image (gimp-file-load RUN-NONINTERACTIVE source))
         (picture (vector-ref (gimp-image-get-layers image) 0))
         (before (gimp-drawable-get-pixel picture 250 190)))
    (gimp-display-new image)
    (gimp-image-select-ellipse image CHANNEL-OP-REPLACE 150 100 220 180)
    (gimp-selection-feather image 30)
    (gimp-displays-flush)
    (wait-for-layer-count image 2 "the generated layer")
    (let ((layer (vector-ref (gimp-image-get-layers image) 0)))
      (check (has-prefix? (gimp-item-get-name layer) "LCM: ")
             "the new layer is the plug-in's: " (gimp-item-get-name layer))
      (display (string-append "LCM-GUI-LAYER " (gimp-item-get-name layer)))
      (newline))
    (wait-for-layer-count image 1 "the undo")
    (check (equal? (gimp-drawable-get-pixel picture 250 190) before) "the picture is unchanged")
    (check (not (gimp-selection-is-empty image)) "the selection is back")
    (display "LCM-GUI-UNDONE")
    (newline)
    ; Filters ▸ Repeat Last runs again with the last values.
    (wait-for-layer-count image 2 "the repeated run")
    (check (has-prefix? (gimp-item-get-name (vector-ref (gimp-image-get-layers image) 0))
                        "LCM: a small red bird")
           "Repeat Last used the last prompt")
    (display "LCM-GUI-PASSED")
    (newline)))

(define (has-prefix? text prefix)
  (and (>= (string-length text) (string-length prefix))
       (string=? (substring text 0 (string-length prefix)) prefix)))

; After the GUI session, in a new GIMP with the same profile: the last values
; were stored and a run with RUN-WITH-LAST-VALS uses them.
(define (lcm-test-last-values source)
  (let* ((image (gimp-file-load RUN-NONINTERACTIVE source))
         (picture (vector-ref (gimp-image-get-layers image) 0)))
    (gimp-image-select-ellipse image CHANNEL-OP-REPLACE 150 100 220 180)
    (let ((layer (plug-in-lcm-inpaint #:run-mode RUN-WITH-LAST-VALS #:image image
                                      #:drawables (vector picture))))
      (check (has-prefix? (gimp-item-get-name layer) "LCM: a small red bird")
             "the last values survived the restart: " (gimp-item-get-name layer)))
    (gimp-image-delete image)
    (display "LCM-TEST-PASSED last-values")
    (newline)))
